"""Random damage to a run folder: the loader either gives back the very same model (the damage hit
nothing that matters, such as JSON whitespace) or refuses with a UserError. Never another
exception, never a hang, never a different model."""

import signal
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nextchar
from nextchar.checkpoint import load_checkpoint
from nextchar.errors import UserError
from nextchar.runfolder import load_model
from tiny import TINY

LINE = "The quick brown fox jumps over the lazy dog; naïve café — déjà vu.\n"
TEXT = "".join(f"{i}: {LINE}" for i in range(90))
FILES = ["best.safetensors", "config.json", "vocab.json"]


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """A trained tiny run, its files' bytes, and what its model says about a fixed input."""
    run = Path(
        nextchar.train(
            text=TEXT, out=tmp_path_factory.mktemp("fuzz") / "run", steps=10, eval_every=5, **TINY
        ).path
    )
    model, vocab, _, _ = load_model(run)
    with torch.no_grad():
        logits = model(torch.arange(len(vocab))[None])[0]
    files = {name: (run / name).read_bytes() for name in [*FILES, "latest.safetensors"]}
    return run, files, vocab, logits


@contextmanager
def time_limit(seconds: int):
    def expire(signum, frame):
        raise TimeoutError(f"the loader took more than {seconds}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@st.composite
def damage(draw, names):
    """(file name, its damaged bytes) given the originals: flipped bits, an inserted or deleted
    byte, an overwritten stretch, or a truncation."""
    name, data = draw(st.sampled_from(names))
    data = bytearray(data)
    kind = draw(
        st.sampled_from(["flip", "flip-header", "insert", "delete", "overwrite", "truncate"])
    )
    if kind in ("flip", "flip-header"):
        # the first few hundred bytes of a safetensors file are its JSON header
        end = min(len(data), 600) if kind == "flip-header" else len(data)
        at = draw(st.integers(0, end - 1))
        data[at] ^= draw(st.integers(1, 255))
    elif kind == "insert":
        at = draw(st.integers(0, len(data)))
        data[at:at] = bytes([draw(st.integers(0, 255))])
    elif kind == "delete":
        at = draw(st.integers(0, len(data) - 1))
        del data[at]
    elif kind == "overwrite":
        at = draw(st.integers(0, len(data) - 1))
        data[at : at + 8] = draw(st.binary(min_size=1, max_size=8))
    else:
        data = data[: draw(st.integers(0, len(data) - 1))]
    return name, bytes(data)


def files_strategy(original, names):
    return damage([(name, original[1][name]) for name in names])


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
@pytest.mark.slow
def test_damaged_run_folder_loads_the_same_model_or_is_refused(original, data):
    run, files, vocab, logits = original
    name, damaged = data.draw(files_strategy(original, FILES))
    (run / name).write_bytes(damaged)
    try:
        with time_limit(10):
            try:
                model, loaded_vocab, _, _ = load_model(run)
            except UserError as exc:
                assert str(exc) and "\n" not in str(exc)
                return
            with torch.no_grad():
                out = model(torch.arange(len(vocab))[None])[0]
        assert loaded_vocab == vocab
        assert torch.equal(out, logits), f"{name} damaged, yet a different model loaded"
    finally:
        (run / name).write_bytes(files[name])


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_damaged_resume_checkpoint_is_intact_or_refused(original, data):
    run, files, _, _ = original
    reference, reference_meta = load_checkpoint(run / "latest.safetensors")
    name, damaged = data.draw(files_strategy(original, ["latest.safetensors"]))
    path = run.parent / "damaged-latest.safetensors"
    path.write_bytes(damaged)
    with time_limit(10):
        try:
            tensors, meta = load_checkpoint(path)
        except UserError:
            return
    assert meta == reference_meta and tensors.keys() == reference.keys()
    assert all(torch.equal(tensors[k], reference[k]) for k in tensors)

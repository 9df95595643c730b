"""One validation for every entry point: the Python API takes the values the CLI takes, through the
same checks in config.py, and refuses the rest with a UserError before anything is on disk."""

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nextchar
from nextchar.config import RunConfig, TrainConfig
from nextchar.errors import UserError
from tiny import TINY

TEXT = "".join(f"{i}: the quick brown fox jumps over the lazy dog.\n" for i in range(60))
FAST = {**TINY, "steps": 3, "hidden": 8, "embed": 4, "sample_chars": 0}


@pytest.mark.parametrize(
    "key, value, says",
    [
        ("steps", 5.5, "--steps must be a whole number, got 5.5"),
        ("hidden", True, "--hidden must be a whole number, got True"),
        ("steps", "5", "--steps must be a whole number, got '5'"),
        ("lr", "0.01", "--lr must be a finite number, got '0.01'"),
        ("lr", float("inf"), "--lr must be a finite number, got inf"),
        ("dropout", False, "--dropout must be a finite number, got False"),
        ("cell", 3, "--cell must be a string, got 3"),
        ("device", "gpu", "--device must be one of auto, cpu, cuda, mps, got 'gpu'"),
        ("time", None, "--time must be a finite number, got None"),
        ("time", "3m", "--time must be a finite number, got '3m'"),
        ("compile", 1, "--compile must be true or false, got 1"),
        ("hiden", 8, "unknown training option(s): hiden"),
    ],
)
def test_api_refuses_what_the_run_folder_would_refuse(tmp_path, key, value, says):
    out = tmp_path / "run"
    with pytest.raises(UserError) as caught:
        nextchar.train(text=TEXT, out=out, **{**FAST, key: value})
    assert str(caught.value) == says
    assert not out.exists()


def test_numpy_values_train_a_run_that_every_reader_accepts(tmp_path):
    out = tmp_path / "run"
    options = {
        **FAST,
        "steps": np.int64(3),
        "hidden": np.int32(8),
        "lr": np.float32(0.01),
        "dropout": np.float64(0.0),
    }
    run = nextchar.train(text=TEXT, out=out, **options)
    config = RunConfig.from_json((out / "config.json").read_text())  # what sample/eval/resume read
    assert (config.train.steps, config.model.hidden) == (3, 8)
    assert type(config.train.steps) is int and type(config.train.lr) is float
    assert run.steps == 3 and run.load().generate("the", length=5, greedy=True).startswith("the")


def test_the_api_checks_its_own_arguments_before_anything_is_made(tmp_path):
    for kwargs, says in [
        ({"out": ""}, "--out is empty"),
        ({"force": "yes"}, "force must be True"),
        ({"quiet": 0}, "quiet must be True"),
        ({"out": 3}, "out must be a path"),
    ]:
        with pytest.raises(UserError, match=says):
            nextchar.train(text=TEXT, **{"out": tmp_path / "r", **kwargs}, **FAST)
    with pytest.raises(UserError, match="text must be a string"):
        nextchar.train(text=b"bytes", out=tmp_path / "r", **FAST)
    assert list(tmp_path.iterdir()) == []


def test_load_refuses_a_device_it_cannot_use(tmp_path):
    nextchar.train(text=TEXT, out=tmp_path / "run", **FAST)
    for device in ("gpu", 0, None):
        with pytest.raises(UserError, match="device must be cpu, cuda or mps"):
            nextchar.load(tmp_path / "run", device=device)


def test_prepare_refuses_unknown_and_mistyped_options(tmp_path):
    (tmp_path / "a.txt").write_text(TEXT)
    with pytest.raises(UserError, match="unknown key"):
        nextchar.prepare(tmp_path / "a.txt", tmp_path / "d", val_fraction=0.1)
    with pytest.raises(UserError, match="val_frac must be float"):
        nextchar.prepare(tmp_path / "a.txt", tmp_path / "d", val_frac="0.1")
    with pytest.raises(UserError, match="force must be True or False"):
        nextchar.prepare(tmp_path / "a.txt", tmp_path / "d", force="yes")
    assert not (tmp_path / "d").exists()
    nextchar.prepare(tmp_path / "a.txt", tmp_path / "d")
    with pytest.raises(UserError, match="use --force to replace it"):
        nextchar.prepare(tmp_path / "a.txt", tmp_path / "d")
    assert nextchar.prepare(tmp_path / "a.txt", tmp_path / "d", force=True) == tmp_path / "d"


def test_config_json_types_match_the_api_types():
    """A value the API accepts is one config.json round-trips (the reported steps=5.5 failure)."""
    config = TrainConfig(steps=np.int64(7), lr=1, epochs=np.int16(2))
    assert (type(config.steps), type(config.lr), type(config.epochs)) == (int, float, float)


# ---- property: any option values either train a readable run or are refused up front ------------

NUMBERS = st.one_of(
    st.integers(-3, 40),
    st.floats(-2, 40),
    st.sampled_from([float("nan"), float("inf"), 1e300]),
    st.integers(-3, 40).map(np.int64),
    st.integers(0, 40).map(np.uint8),
)
WORDS = st.one_of(
    st.sampled_from(
        ["cpu", "auto", "lstm", "gru", "rnn", "cosine", "linear", "strict", "replace", "utf-8", ""]
    ),
    st.text(max_size=4),
)
VALUES = st.one_of(NUMBERS, st.booleans(), WORDS, st.none())
KEYS = [
    "hidden",
    "layers",
    "embed",
    "batch_size",
    "seq_len",
    "dropout",
    "val_frac",
    "test_frac",
    "cell",
    "schedule",
    "warmup_steps",
    "eval_every",
    "seed",
    "grad_clip",
    "weight_decay",
    "final_lr_frac",
    "cooldown",
    "sample_chars",
    "log_every",
    "eval_chars",
    "epochs",
    "device",
    "errors",
    "optimizer",
    "threads",
    "precision",
]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(KEYS), VALUES, min_size=1, max_size=3))
def test_any_options_train_a_loadable_run_or_are_refused_before_disk(options):
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        try:
            run = nextchar.train(text=TEXT, out=out, **{**FAST, "threads": 1, **options})
        except UserError as exc:
            assert str(exc) and "\n" not in str(exc)
            assert not out.exists(), f"refused ({exc}) but left {sorted(out.rglob('*'))}"
            return
        model = nextchar.load(out)  # every reader parses config.json the same way
        for key, value in options.items():
            section = (
                "model"
                if key in ("hidden", "layers", "embed", "cell", "dropout")
                else ("data" if key in ("val_frac", "test_frac", "errors") else "train")
            )
            saved = getattr(getattr(model.config, section), key)
            assert saved == value and not isinstance(value, bool), (key, value, saved)
        assert run.steps <= 3

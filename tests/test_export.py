"""`nextchar export`: the ONNX graph under onnxruntime against the PyTorch model."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import nextchar
from nextchar.config import ModelConfig, SampleConfig
from nextchar.export import build_onnx, read_metadata
from nextchar.model import CharRNN
from nextchar.report import analyse
from nextchar.sample import Sampler
from nextchar.vocab import Vocab
from processes import TINY_TEXT, cli

VOCAB = Vocab(sorted(set(TINY_TEXT)))


def session(model_bytes: bytes) -> ort.InferenceSession:
    return ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])


def random_model(cell: str, embed: int) -> CharRNN:
    torch.manual_seed(1)
    model = CharRNN(ModelConfig(vocab_size=len(VOCAB), cell=cell, embed=embed, hidden=32, layers=2))
    return model.eval()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """cell, embed -> a model trained briefly on TINY_TEXT (greedy text worth comparing)."""
    made = {}

    def get(cell: str, embed: int) -> CharRNN:
        if (cell, embed) not in made:
            out = tmp_path_factory.mktemp(f"{cell}-{embed}") / "run"
            nextchar.train(
                text=TINY_TEXT,
                out=out,
                steps=80,
                cell=cell,
                hidden=32,
                layers=2,
                embed=embed,
                batch_size=8,
                seq_len=32,
                lr=1e-2,
                sample_chars=0,
                quiet=True,
            )
            loaded = nextchar.load(out)
            assert loaded.vocab == VOCAB
            made[cell, embed] = loaded.module
        return made[cell, embed]

    return get


def onnx_greedy(
    sess: ort.InferenceSession, prime_ids: list[int], length: int, layers: int, hidden: int
):
    """Greedy text through the ONNX step (time = 1), state carried: (ids, logits per step)."""
    names = [i.name for i in sess.get_inputs()]
    state = {n: np.zeros((layers, 1, hidden), np.float32) for n in names if n != "ids"}
    feed = {"ids": np.array([prime_ids], np.int64), **state}
    out, logits_seen = list(prime_ids), []
    for _ in range(length):
        result = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))
        logits = result["logits"][0, -1]  # (V,)
        logits_seen.append(logits)
        out.append(int(logits.argmax()))
        feed = {"ids": np.array([[out[-1]]], np.int64), "h": result["h_out"]}
        if "c" in names:
            feed["c"] = result["c_out"]
    return out, np.stack(logits_seen)


@pytest.mark.parametrize(
    "cell, embed", [("lstm", 8), ("lstm", 0), ("gru", 8), ("rnn", 0), ("rnn-relu", 8)]
)
@pytest.mark.slow
def test_onnx_steps_match_pytorch_over_1000_characters(trained, cell, embed):
    model = trained(cell, embed)
    sess = session(build_onnx(model, VOCAB).SerializeToString())
    prime = VOCAB.encode("0: the ")
    ids, onnx_logits = onnx_greedy(sess, prime, 1000, 2, 32)
    # PyTorch, the same characters one step at a time with its own carried state
    torch_logits, hidden = [], None
    with torch.no_grad():
        logits, hidden = model(torch.tensor([prime]), hidden)
        torch_logits.append(logits[0, -1])
        for i in ids[len(prime) : -1]:
            logits, hidden = model(torch.tensor([[i]]), hidden)
            torch_logits.append(logits[0, -1])
    assert np.abs(onnx_logits - torch.stack(torch_logits).numpy()).max() < 1e-4
    # greedy text: identical to nextchar's own sampler (fp32 steps)
    expected = Sampler(model, VOCAB, "fp32").generate(
        SampleConfig(length=1000, greedy=True, prime="0: the ")
    )[0]
    assert VOCAB.decode(ids) == expected
    assert len(set(expected[7:])) > 2, expected  # not one repeated character


def test_the_scorer_is_the_surprisal_view_and_batches_are_dynamic():
    model = random_model("lstm", 8)
    sess = session(build_onnx(model, VOCAB).SerializeToString())
    text = TINY_TEXT[:300]
    zeros = lambda b: np.zeros((2, b, 32), np.float32)  # noqa: E731
    ids = np.array([VOCAB.encode(text)], np.int64)
    logits, h, c, bits = sess.run(None, {"ids": ids, "h": zeros(1), "c": zeros(1)})
    expected = analyse(model, VOCAB, text).bits[1:]
    assert bits.shape == (1, len(text) - 1) and np.abs(bits[0] - expected).max() < 1e-4
    # five streams at once, each as alone
    many = np.array([VOCAB.encode(text[i : i + 50]) for i in range(0, 250, 50)], np.int64)
    together = sess.run(["logits"], {"ids": many, "h": zeros(5), "c": zeros(5)})[0]
    for row in range(5):
        alone = sess.run(["logits"], {"ids": many[row : row + 1], "h": zeros(1), "c": zeros(1)})[0]
        assert np.abs(together[row] - alone[0]).max() < 1e-5


def test_export_command_writes_metadata_atomically(tmp_path):
    text = tmp_path / "tiny.txt"
    text.write_text(TINY_TEXT)
    run = tmp_path / "run"
    nextchar.train(
        text=TINY_TEXT,
        out=run,
        steps=30,
        hidden=32,
        layers=2,
        embed=8,
        batch_size=4,
        seq_len=16,
        lr=1e-2,
        sample_chars=0,
        quiet=True,
    )
    out = tmp_path / "out" / "tiny.onnx"
    out.parent.mkdir()
    code, err = cli("export", run, "--out", out)
    assert code == 0 and err.startswith(f"wrote {out}")
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny.onnx"]  # no temporary left
    model = onnx.load(out)
    meta = read_metadata(model)
    assert (
        json.loads(meta["nextchar.vocab"])
        == json.loads((run / "vocab.json").read_text())["symbols"]
    )
    assert (
        json.loads(meta["nextchar.config"])["model"]
        == json.loads((run / "config.json").read_text())["model"]
    )
    assert meta["nextchar.format"] == "1" and int(meta["nextchar.checkpoint_step"]) == 30
    loaded = nextchar.load(run)
    ids, _ = onnx_greedy(session(out.read_bytes()), loaded.vocab.encode("1: the"), 200, 2, 32)
    assert loaded.vocab.decode(ids) == loaded.generate("1: the", 200, greedy=True, precision="fp32")
    for args, words in (
        ([run, "--out", tmp_path / "nowhere" / "x.onnx"], "does not exist"),
        ([run, "--out", tmp_path], "is a folder"),
        ([tmp_path / "none", "--out", tmp_path / "x.onnx"], "no run folder"),
        ([run, "--out", out, "--format", "tflite"], "invalid choice"),
    ):
        code, err = cli("export", *args)
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err

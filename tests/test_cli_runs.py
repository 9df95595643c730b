"""README promises of `eval` and `sample` on a run's checkpoints, through the CLI: `eval --split`
scores the run's own splits, and `--checkpoint latest` reads latest.safetensors, not the best
weights, in both commands. Checked against the module run by hand on the same weights."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nextchar.checkpoint import load_checkpoint
from nextchar.data import load_prepared
from nextchar.runfolder import RunFolder, load_model
from processes import cli, cli_output

LINE = "The quick brown fox jumps over the lazy dog; naïve café — déjà vu.\n"
TEXT = "".join(f"{i}: {LINE}" for i in range(90))
FLAGS = [
    "--hidden",
    "32",
    "--layers",
    "1",
    "--embed",
    "16",
    "--batch-size",
    "4",
    "--seq-len",
    "16",
    "--lr",
    "1e-2",
    "--sample-chars",
    "0",
    "--precision",
    "fp32",
    "--quiet",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run whose best and latest weights differ: 40 steps, then 10 more at a learning rate so
    high that the validation loss gets worse, so best.safetensors stays at step 40."""
    folder = tmp_path_factory.mktemp("cli-runs")
    (folder / "tiny.txt").write_text(TEXT)
    run = folder / "run"
    assert (
        cli("train", folder / "tiny.txt", "--out", run, *FLAGS, "--steps", 40, "--eval-every", 20)[
            0
        ]
        == 0
    )
    code, err = cli("train", "--resume", run, "--steps", 50, "--lr", 3, "--quiet")
    assert code == 0, err
    assert load_checkpoint(run / "best.safetensors")[1]["step"] == 40
    assert load_checkpoint(run / "latest.safetensors")[1]["step"] == 50
    return run


def split_ids(run, name: str) -> np.ndarray:
    config = RunFolder(run).read_config()
    data = load_prepared(run / "data").resplit(config.data.val_frac, config.data.test_frac)
    return np.asarray(data.split(name), dtype=np.int64)


def one_pass_nats(run, which: str, ids: np.ndarray) -> float:
    """Mean cross-entropy of one plain forward pass over `ids` with the run's `which` weights."""
    model = load_model(run, which)[0]
    x = torch.from_numpy(ids)
    with torch.no_grad():
        logits, _ = model(x[None, :-1])
    return F.cross_entropy(logits[0], x[1:]).item()


def eval_json(*args) -> dict:
    code, out, err = cli_output("eval", *args, "--json")
    assert code == 0, err
    return json.loads(out)


def test_eval_split_scores_the_runs_own_splits(run):
    final = RunFolder(run).read_metrics()[-1]
    scores = {}
    for split in ("val", "test", "train"):
        result = eval_json(run, "--split", split)
        ids = split_ids(run, split)
        assert result["text"] == f"{split} split" and result["chars"] == len(ids) - 1
        assert result["nats_per_char"] == pytest.approx(one_pass_nats(run, "best", ids), rel=1e-4)
        scores[split] = result["nats_per_char"]
    assert eval_json(run)["nats_per_char"] == scores["val"]  # the default
    # the test score the run recorded is that of its best weights on the test split
    assert scores["test"] == pytest.approx(final["test"]["nats_per_char"], rel=1e-6)
    assert len(set(scores.values())) == 3


def test_checkpoint_latest_for_eval_and_sample(run):
    ids = split_ids(run, "val")
    best, latest = (
        eval_json(run, "--checkpoint", which)["nats_per_char"] for which in ("best", "latest")
    )
    assert latest == pytest.approx(one_pass_nats(run, "latest", ids), rel=1e-4)
    assert best == pytest.approx(one_pass_nats(run, "best", ids), rel=1e-4)
    assert latest > best + 0.01

    texts = {}
    for which in ("best", "latest"):
        code, out, err = cli_output(
            "sample",
            run,
            "--checkpoint",
            which,
            "--greedy",
            "--prime",
            "The",
            "--length",
            40,
            "--weights",
            "fp32",
        )
        assert code == 0, err
        texts[which] = out.rstrip("\n")
        model, vocab = load_model(run, which)[:2]
        prefix = vocab.encode("The")
        with torch.no_grad():  # recompute the whole prefix every step: slow but obviously right
            for _ in range(40):
                logits, _ = model(torch.tensor([prefix]))
                prefix.append(int(logits[0, -1].argmax()))
        assert texts[which] == vocab.decode(prefix)
    assert texts["best"] != texts["latest"]

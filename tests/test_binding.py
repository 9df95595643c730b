"""Runs are bound to their data: a run records the fingerprint of the prepared data it trained on,
and eval (on its splits), report, sample and --resume refuse data that changed under it."""

import hashlib
import json
from pathlib import Path

import pytest

from nextchar.data import fingerprint
from nextchar.vocab import Vocab
from processes import TINY_TEXT, TINY_TRAIN_FLAGS, cli

TRAIN = TINY_TRAIN_FLAGS + ["--quiet"]
TEXT = TINY_TEXT
READERS = [
    ["eval", "{run}"],
    ["eval", "{run}", "--split", "test", "--json"],
    ["report", "{run}"],
    ["sample", "{run}", "--length", "5"],
    ["train", "--resume", "{run}", "--steps", "5"],
]


@pytest.fixture
def run_on_prepared(tmp_path) -> tuple[Path, Path]:
    (tmp_path / "t.txt").write_text(TEXT)
    data, run = tmp_path / "data", tmp_path / "run"
    assert cli("prepare", tmp_path / "t.txt", "--out", data)[0] == 0
    assert cli("train", data, "--out", run, *TRAIN)[0] == 0
    return run, data


def reprepare(data: Path, text: str) -> None:
    (data.parent / "other.txt").write_text(text)
    assert cli("prepare", data.parent / "other.txt", "--out", data, "--force")[0] == 0


@pytest.mark.parametrize(
    "other",
    [TEXT.upper(), TEXT.replace("q", ""), TEXT[::-1]],
    ids=["larger-vocab", "smaller-vocab", "same-vocab"],
)
def test_every_reader_refuses_data_prepared_again_from_other_text(run_on_prepared, other):
    run, data = run_on_prepared
    reprepare(data, other)
    for args in READERS:
        code, err = cli(*[a.format(run=run) for a in args])
        assert code == 2 and len(err.splitlines()) == 1, (args, err)
        assert f"the data in {data} is not the data {run} trained on" in err, err
        assert "prepare it again" in err
    code, _ = cli("eval", run, data.parent / "other.txt")  # any text of one's own still scores
    assert code == 0


def test_the_same_text_prepared_again_still_matches(run_on_prepared):
    run, data = run_on_prepared
    reprepare(data, TEXT)
    assert cli("eval", run)[0] == 0
    assert cli("train", "--resume", run, "--steps", "5")[0] == 0


def test_a_run_from_before_fingerprints_is_checked_by_its_vocabulary(run_on_prepared):
    run, data = run_on_prepared
    source = json.loads((run / "source.json").read_text())
    (run / "source.json").write_text(json.dumps({"data": source["data"]}))  # as runs were before
    assert cli("eval", run)[0] == 0
    reprepare(data, TEXT.replace("q", ""))  # was an IndexError traceback, or a wrong number
    code, err = cli("eval", run)
    assert code == 2 and "is not the data" in err


def test_the_fingerprint_is_that_of_the_token_file(run_on_prepared):
    """Against an independent hash of tokens.bin as it lies on disk."""
    run, data = run_on_prepared
    meta = json.loads((data / "data.json").read_text())
    vocab = Vocab.from_json((data / "vocab.json").read_text())
    tokens = hashlib.blake2b((data / "tokens.bin").read_bytes(), digest_size=16).hexdigest()
    assert meta["fingerprint"] == fingerprint(meta["length"], meta["dtype"], vocab, tokens)
    assert json.loads((run / "source.json").read_text())["fingerprint"] == meta["fingerprint"]
    inner = (
        json.loads((run / "data" / "data.json").read_text()) if (run / "data").exists() else None
    )
    assert inner is None  # trained from a prepared folder: nothing copied

"""Input discovery skips nextchar's own folders (runs, prepared data) inside an input directory,
and says which files it skipped and why unless --quiet."""

import json
import os
from pathlib import Path

import pytest

from nextchar.corpus import discover
from processes import TINY_TEXT, TINY_TRAIN_FLAGS, cli

TRAIN = TINY_TRAIN_FLAGS
TEXT = TINY_TEXT


@pytest.fixture
def corpus(tmp_path) -> Path:
    """corpus/ with two texts, a run and a prepared folder made from them, a binary file, a hidden
    one and a dangling link."""
    corpus = tmp_path / "corpus"
    (corpus / "notes").mkdir(parents=True)
    (corpus / "a.txt").write_text(TEXT)
    (corpus / "notes" / "b.md").write_text(TEXT.upper())
    assert cli("train", corpus, "--out", corpus / "run", *TRAIN, "--quiet")[0] == 0
    assert cli("prepare", corpus, "--out", corpus / "prep", "--quiet")[0] == 0
    (corpus / "image.bin").write_bytes(b"\x89PNG\x00\x01")
    (corpus / ".hidden.txt").write_text("secret")
    os.symlink(corpus / "gone.txt", corpus / "link.txt")
    return corpus


def test_training_on_a_folder_skips_nextchars_own_and_says_so(tmp_path, corpus):
    code, err = cli("train", corpus, "--out", tmp_path / "r2", *TRAIN)
    assert code == 0, err
    sources = [
        s["path"]
        for s in json.loads((tmp_path / "r2" / "data" / "data.json").read_text())["sources"]
    ]
    assert sources == [str(corpus / "a.txt"), str(corpus / "notes" / "b.md")]
    assert f"skipped {corpus / 'run'}/: a run folder of nextchar's own" in err
    assert f"skipped {corpus / 'prep'}/: a prepared data folder of nextchar's own" in err
    assert f"skipped {corpus / 'image.bin'}: binary (it holds NUL bytes)" in err
    assert f"skipped {corpus / '.hidden.txt'}: hidden" in err
    assert f"skipped {corpus / 'link.txt'}: not a regular file" in err


def test_quiet_prepare_says_nothing_and_skips_the_same(tmp_path, corpus):
    code, err = cli("prepare", corpus, "--out", tmp_path / "d", "--quiet")
    assert (code, err) == (0, "")
    sources = [s["path"] for s in json.loads((tmp_path / "d" / "data.json").read_text())["sources"]]
    assert (
        sources
        == [str(p) for p in discover([corpus])]
        == [str(corpus / "a.txt"), str(corpus / "notes" / "b.md")]
    )


def test_a_run_folder_given_as_input_is_refused(corpus):
    code, err = cli("train", corpus / "run", "--out", corpus.parent / "r3", *TRAIN)
    assert code == 2 and "is a run folder of nextchar, not text" in err
    assert not (corpus.parent / "r3").exists()

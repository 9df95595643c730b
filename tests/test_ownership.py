"""nextchar deletes only what it made: --out and --force for `train` and `prepare` touch a folder
only when it is new, empty, or provably nextchar's own (a run's config.json, a prepared folder's
marker), and --force never replaces a folder that holds or lies inside an input."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from nextchar.checkpoint import load_checkpoint, vocab_digest
from nextchar.data import load_prepared
from nextchar.runfolder import RunFolder
from nextchar.vocab import Vocab
from processes import TINY_TEXT, TINY_TRAIN_FLAGS, cli
from tiny import TINY

TRAIN = TINY_TRAIN_FLAGS + ["--quiet"]
TEXT = TINY_TEXT


def refused(code_and_err) -> str:
    code, err = code_and_err
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture
def text_file(tmp_path) -> Path:
    path = tmp_path / "t.txt"
    path.write_text(TEXT)
    return path


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_a_folder_that_is_not_a_run_is_never_cleared(tmp_path, text_file, force):
    """The reported case: --out p with p/data/notes.md exited 0 and deleted notes.md."""
    project = tmp_path / "p"
    for name in ("data/notes.md", "report.html", "curves.png", "metrics.jsonl", "source.json"):
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text("mine")
    before = snapshot(project)
    line = refused(cli("train", text_file, "--out", project, *TRAIN, *force))
    assert "is not empty and holds no nextchar run" in line
    assert snapshot(project) == before


def test_training_into_the_input_folder_is_refused(tmp_path, monkeypatch):
    """`cd proj && nextchar train data/ --out .` deleted the corpus."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "corpus.txt").write_text(TEXT)
    monkeypatch.chdir(tmp_path)
    for force in ([], ["--force"]):
        assert "holds no nextchar run" in refused(
            cli("train", "data/", "--out", ".", *TRAIN, *force)
        )
    assert (tmp_path / "data" / "corpus.txt").read_text() == TEXT


def test_an_empty_out_is_an_error_not_the_current_folder(tmp_path, text_file, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "--out is empty" in refused(cli("train", text_file, "--out", "", *TRAIN))
    assert "--out is empty" in refused(cli("prepare", text_file, "--out", ""))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.txt"]


def test_prepare_never_offers_to_replace_its_input(tmp_path):
    """`prepare c --out c` suggested --force, and --force deleted the corpus."""
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "a.txt").write_text(TEXT)
    line = refused(cli("prepare", corpus, "--out", corpus))
    assert "--force" not in line and "files nextchar did not make" in line
    refused(cli("prepare", corpus, "--out", corpus, "--force"))
    assert snapshot(corpus) == {"a.txt": TEXT.encode()}


def test_prepare_replaces_only_a_folder_it_marked(tmp_path, text_file):
    data = tmp_path / "d"
    assert cli("prepare", text_file, "--out", data)[0] == 0
    assert "--force" in refused(cli("prepare", text_file, "--out", data))
    (tmp_path / "u.txt").write_text(TEXT.upper())
    assert cli("prepare", tmp_path / "u.txt", "--out", data, "--force")[0] == 0
    assert "T" in json.loads((data / "vocab.json").read_text())["symbols"]
    meta = json.loads((data / "data.json").read_text())  # as an older nextchar wrote it: unmarked
    del meta["nextchar"]
    (data / "data.json").write_text(json.dumps(meta))
    assert "remove it yourself" in refused(cli("prepare", text_file, "--out", data, "--force"))
    (data / "notes.md").write_text("mine")  # a marked folder with a user's file in it
    meta["nextchar"] = "nextchar prepared data"
    (data / "data.json").write_text(json.dumps(meta))
    assert "files nextchar did not make" in refused(
        cli("prepare", text_file, "--out", data, "--force")
    )
    assert (data / "notes.md").read_text() == "mine"


def test_force_replaces_a_run(tmp_path, text_file):
    """Everything of the old run goes: its data, weights, metrics, report and plot; what is left
    is the new run alone."""
    run = tmp_path / "run"
    assert cli("train", text_file, "--out", run, *TRAIN)[0] == 0
    (run / "report.html").write_text(
        "<html>the old run</html>"
    )  # as `report` and `plot` leave them
    (run / "curves.png").write_bytes(b"\x89PNG the old run")
    assert "--force to overwrite it" in refused(cli("train", text_file, "--out", run, *TRAIN))
    (tmp_path / "u.txt").write_text(TEXT.upper())
    new = [*TRAIN[: TRAIN.index("--steps")], "--steps", "5", *TRAIN[TRAIN.index("--steps") + 2 :]]
    assert cli("train", tmp_path / "u.txt", "--out", run, *new, "--force")[0] == 0

    vocab = Vocab.from_json((run / "vocab.json").read_text())
    assert vocab == Vocab.from_text(TEXT.upper())
    data = load_prepared(run / "data")
    assert vocab.decode(np.asarray(data.tokens).tolist()) == TEXT.upper()
    assert json.loads((run / "source.json").read_text())["fingerprint"] == data.fingerprint
    for name in ("best.safetensors", "latest.safetensors"):
        meta = load_checkpoint(run / name)[1]
        assert meta["vocab"] == vocab_digest(vocab) and meta["step"] == 5
    records = RunFolder(run).read_metrics()
    assert [r["kind"] for r in records].count("final") == 1 and records[-1]["step"] == 5
    assert all(r["step"] <= 5 for r in records)
    assert not (run / "report.html").exists() and not (run / "curves.png").exists()


def test_force_never_replaces_a_run_that_holds_or_lies_inside_an_input(tmp_path, text_file):
    run = tmp_path / "corpus" / "run"
    (tmp_path / "corpus").mkdir()
    shutil.copy(text_file, tmp_path / "corpus" / "t.txt")
    assert cli("train", text_file, "--out", run, *TRAIN)[0] == 0
    before = snapshot(run)
    for source in (run / "data", tmp_path / "corpus"):  # inside the run; holding the run
        line = refused(cli("train", source, "--out", run, *TRAIN, "--force"))
        assert "overlaps the input" in line
    assert snapshot(run) == before
    line = refused(cli("prepare", text_file, "--out", run / "data", "--force"))
    assert "is the data folder of the run" in line
    assert snapshot(run) == before


def test_a_folder_holding_only_a_stale_lock_counts_as_empty(tmp_path, text_file):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".nextchar.lock").write_text('{"pid": 1}')  # left by a process that died
    assert cli("train", text_file, "--out", run, *TRAIN)[0] == 0
    assert (run / "best.safetensors").exists()


def test_resume_refuses_out_and_force(tmp_path, text_file):
    run = tmp_path / "run"
    assert cli("train", text_file, "--out", run, *TRAIN)[0] == 0
    for extra in (["--out", tmp_path / "other"], ["--force"]):
        assert "give no --out or --force" in refused(cli("train", "--resume", run, *extra))
    assert not (tmp_path / "other").exists()


def test_the_api_follows_the_same_rule(tmp_path):
    import nextchar
    from nextchar.errors import UserError

    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="holds no nextchar run"):
        nextchar.train(text=TEXT, out=tmp_path, force=True, **{**TINY, "steps": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]

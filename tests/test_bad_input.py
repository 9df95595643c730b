"""Bad input ends with one clear line on stderr and exit code 2, never a traceback, and leaves
every existing run as it was.

The module fixture `cli` runs every case up front and the tests check its results. Most run the
real CLI (`python -m nextchar`) in subprocesses, a few at a time; as each costs a torch import,
the rest (marked IN_PROCESS) run `cli.main` in this process, with stdout and stderr captured.
"""

import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import traceback
from concurrent.futures import ThreadPoolExecutor
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch

import nextchar
from nextchar.cli import main
from nextchar.corpus import iter_chunks
from nextchar.errors import UserError
from tiny import TINY

TRAIN = [
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
    "--steps",
    "10",
    "--sample-chars",
    "20",
    "--quiet",
]
LINE = "The quick brown fox jumps over the lazy dog; naïve café — déjà vu.\n"
TEXT = "".join(f"{i}: {LINE}" for i in range(90))
UTF8_PREFIX = "naïve café — déjà vu\n" * 3  # multibyte: byte offsets differ from char offsets


def user_error(proc) -> str:
    """The one stderr line of a CLI run that refused its input (exit code 2)."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), proc.stderr
    assert "error" in lines[0]
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """The folder's files but the lock file (which names its latest holder)."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".nextchar.lock"
    }


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


class Evil:
    """Unpickling this makes a folder: proof that something was unpickled."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def bad_bytes() -> dict[str, tuple[bytes, int]]:
    """Files that are not UTF-8 and the offset of their first bad byte, counted by hand."""
    prefix = UTF8_PREFIX.encode("utf-8")
    ascii_prefix = b"Shift-JIS text follows:\n" * 2  # a UTF-8 prefix is no valid Shift-JIS
    sjis = ascii_prefix + "日本語のテキストです。".encode("shift_jis") * 40  # 0x93: no UTF-8 start
    latin1 = prefix + "Ça coûte très cher à Noël.\n".encode("latin-1") * 40  # 'Ç' = 0xC7, then 'a'
    elf = b"\x7fELF\x02\x01\x01\x00" + bytes(8) + b"\x02\x00\x3e\x00" + bytes(range(256)) * 4
    # 0x00..0x7f are ASCII; 0x80 (a continuation byte with no lead) is the first bad one
    return {
        "sjis": (sjis, len(ascii_prefix)),
        "latin1": (latin1, len(prefix)),
        "elf": (elf, 20 + 0x80),
    }


def run_cli(args: list, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nextchar", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def run_main(args: list, cwd: Path) -> subprocess.CompletedProcess:
    """`nextchar ARGS` through cli.main in this process, as if it were a subprocess."""
    out, err = io.StringIO(), io.StringIO()
    before = os.getcwd()
    os.chdir(cwd)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            main([str(a) for a in args])
        code = 0
    except SystemExit as stop:
        code = stop.code
    except BaseException:  # what the interpreter would print for an escaped exception
        code = 1
        err.write(traceback.format_exc())
    finally:
        os.chdir(before)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


IN_PROCESS = {
    "no-text-files",
    "empty",
    "latin1",
    "elf",
    "prepare-sjis",
    "hidden-0",
    "out-in-proc",
    "no-weights",
    "truncated",
    "corrupted",
    "vocab-bigger",
    "torch-zip",
    "resume-missing",
    "resume-no-latest",
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Input files, a trained run, and damaged copies of it."""
    root = tmp_path_factory.mktemp("bad-input")
    (root / "tiny.txt").write_text(TEXT, encoding="utf-8")
    (root / "empty.txt").write_bytes(b"")
    (root / "short.txt").write_text("hello world", encoding="utf-8")
    (root / "one.txt").write_text("a" * 500, encoding="utf-8")
    (root / "nothing").mkdir()
    (root / "nothing" / ".hidden.txt").write_text(TEXT)
    (root / "nothing" / "image.bin").write_bytes(b"\x89PNG\x00\x00" * 10)
    for name, (data, _) in bad_bytes().items():
        (root / f"{name}.txt").write_bytes(data)
    (root / "regular-file").write_text("not a folder")

    run = Path(nextchar.train(text=TEXT, out=root / "run", steps=10, eval_every=5, **TINY).path)

    def damaged(name: str) -> Path:
        return copy_run(run, root / name)

    (damaged("no-weights") / "best.safetensors").unlink()
    (root / "no-weights" / "latest.safetensors").unlink()
    path = damaged("truncated") / "best.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    path = damaged("corrupted") / "best.safetensors"
    raw = bytearray(path.read_bytes())
    raw[-100] ^= 0x01  # one bit of one weight
    path.write_bytes(bytes(raw))
    path = damaged("newer") / "config.json"
    config = json.loads(path.read_text())
    config["format_version"] = 99
    path.write_text(json.dumps(config))
    path = damaged("vocab-bigger") / "vocab.json"
    symbols = json.loads(path.read_text())["symbols"]
    path.write_text(json.dumps({"symbols": symbols + ["\u2603"]}))
    path = damaged("vocab-swapped") / "vocab.json"  # same size, one symbol different
    path.write_text(json.dumps({"symbols": symbols[:-1] + ["\u2603"]}))
    weights = {k: v for k, v in nextchar.load(run).module.state_dict().items()}
    torch.save(weights, damaged("torch-zip") / "best.safetensors")
    (damaged("pickled") / "best.safetensors").write_bytes(
        pickle.dumps({"weights": Evil(root / "UNPICKLED")}, protocol=2)
    )
    (damaged("no-latest") / "latest.safetensors").unlink()
    return root, run, snapshot(run)


@pytest.fixture(scope="module")
def cli(world):
    """Every subprocess case, run a few at a time: name -> CompletedProcess."""
    root, run, _ = world
    cases = {
        "missing": ["train", "nope.txt", "--out", "out-missing", *TRAIN],
        "no-text-files": ["train", "nothing", "--out", "out-nothing", *TRAIN],
        "empty": ["train", "empty.txt", "--out", "out-empty", *TRAIN],
        "short": ["train", "short.txt", "--out", "out-short", *TRAIN],
        "one-char": ["train", "one.txt", "--out", "out-one", *TRAIN],
        "sjis": ["train", "sjis.txt", "--out", "out-sjis", *TRAIN],
        "latin1": ["train", "latin1.txt", "--out", "out-latin1", *TRAIN],
        "elf": ["train", "elf.txt", "--out", "out-elf", *TRAIN],
        "prepare-sjis": ["prepare", "sjis.txt", "--out", "data-sjis"],
        "hidden-0": ["train", "tiny.txt", "--out", "out-hidden", *TRAIN, "--hidden", "0"],
        "time-0": ["train", "tiny.txt", "--out", "out-time", *TRAIN, "--time", "0"],
        "time-bad": ["train", "tiny.txt", "--out", "out-time", *TRAIN, "--time", "5 parsecs"],
        "out-is-run": ["train", "tiny.txt", "--out", run, *TRAIN],
        "out-is-run-bad-input": ["train", "nope.txt", "--out", run, *TRAIN],
        "out-under-file": ["train", "tiny.txt", "--out", "regular-file/run", *TRAIN],
        "out-in-proc": ["train", "tiny.txt", "--out", "/proc/self/nextchar-run", *TRAIN],
        "top-k-0": ["sample", run, "--top-k", "0", "--length", "5"],
        "prime-unknown": ["sample", run, "--prime", "Zebra\u2603", "--length", "5"],
        "no-weights": ["sample", "no-weights", "--length", "5"],
        "truncated": ["sample", "truncated", "--length", "5"],
        "corrupted": ["eval", "corrupted", "tiny.txt"],
        "newer": ["sample", "newer", "--length", "5"],
        "vocab-bigger": ["sample", "vocab-bigger", "--length", "5"],
        "vocab-swapped": ["sample", "vocab-swapped", "--length", "5"],
        "torch-zip": ["sample", "torch-zip", "--length", "5"],
        "pickled": ["eval", "pickled", "tiny.txt"],
        "resume-no-latest": ["train", "--resume", "no-latest", "--quiet"],
        "resume-missing": ["train", "--resume", "no-such-run", "--quiet"],
        "resume-changed-model": ["train", "--resume", run, "--hidden", "64", "--quiet"],
        "resume-changed-batch": ["train", "--resume", run, "--batch-size", "8", "--quiet"],
    }
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {
            name: pool.submit(run_cli, args, root)
            for name, args in cases.items()
            if name not in IN_PROCESS
        }
        results = {name: run_main(args, root) for name, args in cases.items() if name in IN_PROCESS}
        return results | {name: future.result() for name, future in futures.items()}


def in_process(capsys, *args) -> str:
    """`nextchar ARGS` through cli.main in this process -> its one stderr line (exit code 2)."""
    with pytest.raises(SystemExit) as stop:
        main([str(a) for a in args])
    err = capsys.readouterr().err
    assert stop.value.code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].strip(), err
    return lines[0]


# ---- input text ----------------------------------------------------------------------------


@pytest.mark.slow
def test_missing_file(world, cli):
    root = world[0]
    assert "no such file or directory: nope.txt" in user_error(cli["missing"])
    assert not (root / "out-missing").exists()


def test_directory_without_text_files(world, cli):
    assert "holds no text files" in user_error(cli["no-text-files"])
    assert not (world[0] / "out-nothing").exists()


def test_empty_file(world, cli):
    assert "empty" in user_error(cli["empty"])
    assert not (world[0] / "out-empty").exists()


def test_file_shorter_than_one_window(world, cli):
    line = user_error(cli["short"])
    assert "fewer than one training window" in line and "--seq-len" in line
    assert not (world[0] / "out-short").exists()  # no half-made run is left behind


def test_single_distinct_character(world, cli):
    assert "only one distinct character" in user_error(cli["one-char"])


def test_single_character_in_the_training_split(tmp_path):
    text = "a" * 900 + "ab" * 50  # 'b' only in the validation and test splits
    with pytest.raises(UserError, match="only one distinct character"):
        nextchar.train(text=text, out=tmp_path / "run", steps=5, **TINY)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["sjis", "latin1", "elf"])
def test_not_utf8_is_refused_naming_file_and_offset(world, cli, name):
    line = user_error(cli[name])
    offset = bad_bytes()[name][1]
    assert f"{name}.txt is not valid utf-8" in line
    assert f"at offset {offset} " in line
    assert "--encoding" in line and "--errors replace" in line
    data = (world[0] / f"{name}.txt").read_bytes()
    assert f"byte 0x{data[offset]:02x}" in line
    data[:offset].decode("utf-8")  # the reported byte really is the first bad one
    assert not (world[0] / f"out-{name}").exists()


def test_prepare_refuses_not_utf8_too(world, cli):
    assert f"at offset {bad_bytes()['sjis'][1]} " in user_error(cli["prepare-sjis"])
    assert not (world[0] / "data-sjis").exists()


@pytest.mark.parametrize("chunk_bytes", [1, 2, 3, 7, 64])
def test_bad_byte_offset_across_chunk_boundaries(tmp_path, chunk_bytes):
    for name, (data, offset) in bad_bytes().items():
        path = tmp_path / f"{name}.txt"
        path.write_bytes(data)
        with pytest.raises(UserError, match=f"at offset {offset} "):
            for _ in iter_chunks(path, chunk_bytes=chunk_bytes):
                pass


@pytest.mark.parametrize(
    "name, options, expect",
    [
        ("sjis", {"encoding": "shift_jis"}, "日本語"),
        ("latin1", {"encoding": "latin-1"}, "Ça coûte"),
        ("latin1", {"errors": "replace"}, "\ufffd"),
        ("elf", {"errors": "replace"}, "\ufffdELF"),
    ],
)
def test_encoding_and_errors_replace_let_a_user_proceed(world, tmp_path, name, options, expect):
    path = world[0] / f"{name}.txt"
    run = nextchar.train(str(path), out=tmp_path / "run", steps=5, **options, **TINY)
    assert run.steps == 5
    assert all(c in nextchar.load(run.path).vocab for c in expect)
    saved = json.loads((run.path / "config.json").read_text())["data"]
    assert {k: saved[k] for k in options} == options


# ---- impossible settings --------------------------------------------------------------------


def test_hidden_zero(world, cli):
    assert "--hidden must be at least 1, got 0" in user_error(cli["hidden-0"])
    assert not (world[0] / "out-hidden").exists()


@pytest.mark.parametrize("case", ["time-0", "time-bad"])
def test_time_zero_or_malformed(world, cli, case):
    assert "--time" in user_error(cli[case])
    assert not (world[0] / "out-time").exists()


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--layers", "0", "--layers must be at least 1"),
        ("--seq-len", "0", "--seq-len must be at least 1"),
        ("--dropout", "1.5", "--dropout must be in [0, 1)"),
        ("--dropout", "nan", "--dropout must be a finite number, got nan"),
        ("--batch-size", "0", "--batch-size must be at least 1"),
        ("--lr", "-1", "--lr must be positive"),
        ("--time", "-3", "--time"),
        ("--checkpoint-every", "soon", "must be a duration"),
    ],
)
def test_impossible_training_settings(tmp_path, capsys, flag, value, message):
    (tmp_path / "tiny.txt").write_text(TEXT)
    out = tmp_path / "out"
    assert message in in_process(
        capsys, "train", tmp_path / "tiny.txt", "--out", out, *TRAIN, flag, value
    )
    assert not out.exists()


def test_top_k_zero_is_refused(cli):
    assert "--top-k must be at least 1" in user_error(cli["top-k-0"])


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--top-k", "-2"], "--top-k must be at least 1"),
        (["--top-p", "0"], "--top-p must be in (0, 1]"),
        (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
        (["--temperature", "0"], "--temperature must be positive"),
        (["--temperature", "-0.5"], "--temperature must be positive"),
        (["--temperature", "inf"], "--temperature must be a finite number, got inf"),
        (["--length", "-1"], "--length must not be negative"),
    ],
)
def test_impossible_sampling_settings(world, capsys, flags, message):
    assert message in in_process(capsys, "sample", world[1], "--length", "5", *flags)


def test_top_k_off_by_leaving_it_out(world):
    model = nextchar.load(world[1])
    assert len(model.generate("The", 20, seed=1)) == 23
    assert model.generate("The", 20, seed=1, top_k=1) == model.generate("The", 20, greedy=True)
    with pytest.raises(UserError, match="--top-k"):
        model.generate("The", 5, top_k=0)


# ---- where the run goes ---------------------------------------------------------------------


@pytest.mark.parametrize("case", ["out-is-run", "out-is-run-bad-input", "resume-changed-batch"])
def test_existing_run_is_untouched(world, cli, case):
    root, run, before = world
    line = user_error(cli[case])
    if case != "resume-changed-batch":
        assert "already holds a run" in line or "nope.txt" in line
    else:
        assert "--batch-size differs" in line
    assert snapshot(run) == before  # byte for byte, config.json included


def test_out_that_cannot_be_written(cli):
    assert "cannot write to --out regular-file/run" in user_error(cli["out-under-file"])
    assert "cannot write to --out /proc/self/nextchar-run" in user_error(cli["out-in-proc"])


# ---- sampling input -------------------------------------------------------------------------


def test_prime_outside_the_vocabulary(world, cli, capsys):
    line = user_error(cli["prime-unknown"])
    assert "'Z' (U+005A)" in line and "(U+2603)" in line and "--unknown skip" in line
    with pytest.raises(SystemExit) as stop:
        main(
            [
                "sample",
                str(world[1]),
                "--prime",
                "Zebra\u2603",
                "--unknown",
                "skip",
                "--length",
                "5",
                "--seed",
                "3",
            ]
        )
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("ebra") and out.endswith("\n") and len(out) == 4 + 5 + 1


# ---- damaged run folders --------------------------------------------------------------------


@pytest.mark.parametrize(
    "case, message",
    [
        ("no-weights", "best.safetensors is missing"),
        ("truncated", "truncated or corrupted"),
        ("corrupted", "checksum mismatch"),
        ("newer", "format version 99, newer than this nextchar understands"),
        ("vocab-bigger", "the vocab does not match the weights"),
        ("vocab-swapped", "the vocab does not match the weights"),
        ("torch-zip", "a zip archive (a torch.save checkpoint?), not safetensors"),
        ("pickled", "a Python pickle, not safetensors"),
    ],
)
def test_damaged_run_folder_is_refused_with_the_reason(cli, case, message):
    assert message in user_error(cli[case])


def test_nothing_is_ever_unpickled(world, cli, monkeypatch):
    root = world[0]
    user_error(cli["pickled"])
    assert not (root / "UNPICKLED").exists()

    def forbidden(*args, **kwargs):
        raise AssertionError("something was unpickled")

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    for case in ("pickled", "torch-zip"):
        with pytest.raises(UserError, match="never unpickles"):
            nextchar.load(root / case)
    assert nextchar.load(world[1]).generate("The", 5, seed=0)  # the intact run still loads
    assert not (root / "UNPICKLED").exists()


# ---- resuming -------------------------------------------------------------------------------


def test_resume_needs_a_checkpoint(cli):
    assert "has no resumable checkpoint (latest.safetensors)" in user_error(cli["resume-no-latest"])
    assert "no run folder at no-such-run" in user_error(cli["resume-missing"])


def test_resume_refuses_a_changed_model(cli):
    assert "cannot change --hidden when resuming" in user_error(cli["resume-changed-model"])

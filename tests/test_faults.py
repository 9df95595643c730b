"""Faults a run survives: Ctrl-C and SIGTERM, SIGKILL at any moment (even mid-write), stray
temporary files, divergence, and a full disk. Each ends with the last complete checkpoint in
place and a run that `--resume` continues."""

import errno
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import nextchar
import nextchar.atomic as atomic
import nextchar.checkpoint
import nextchar.data
import nextchar.runfolder as runfolder
import nextchar.trainer
from clock import install as virtual_clock
from nextchar.atomic import CheckpointWriteError
from nextchar.checkpoint import load_checkpoint
from nextchar.cli import main
from nextchar.errors import Diverged
from nextchar.runfolder import load_model
from processes import cli, wait_until
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
    "--sample-chars",
    "20",
    "--log-every",
    "5",
    "--quiet",
]
LINE = "The quick brown fox jumps over the lazy dog; naïve café — déjà vu.\n"
TEXT = "".join(f"{i}: {LINE}" for i in range(90))


def start(*args, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "nextchar", *map(str, args)],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def logged_steps(run: Path) -> list[int]:
    return [r["step"] for r in runfolder.RunFolder(run).read_metrics() if r.get("kind") == "train"]


def model_tensors(path: Path) -> dict[str, torch.Tensor]:
    tensors, _ = load_checkpoint(path)
    return {k: v for k, v in tensors.items() if k.startswith("model.")}


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


def stray_temps(run: Path) -> list[Path]:
    return sorted(run.glob(".*.tmp-*"))


# ---- signals --------------------------------------------------------------------------------


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
@pytest.mark.slow
def test_signal_saves_a_checkpoint_and_says_how_to_resume(tmp_path, signum, code):
    (tmp_path / "tiny.txt").write_text(TEXT)
    run = tmp_path / "run"
    proc = start(
        "train",
        "tiny.txt",
        "--out",
        "run",
        *TRAIN,
        "--steps",
        100000,
        "--checkpoint-every",
        100000,
        "--eval-every",
        100000,
        cwd=tmp_path,
    )
    wait_until(lambda: len(logged_steps(run)) >= 2, proc)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    name = signal.Signals(signum).name
    assert f"{name} received" in lines[0] and "saved a resumable checkpoint" in lines[0]
    assert lines[0].endswith("continue with: nextchar train --resume run")
    step = int(lines[0].split("stopped at step ")[1].split()[0])
    _, meta = load_checkpoint(run / "latest.safetensors")  # written at the signal, not before
    assert meta["step"] == step >= max(logged_steps(run)) >= 10
    assert stray_temps(run) == []

    resumed = nextchar.train(resume=run, steps=step + 7)
    assert resumed.steps == step + 7
    final = runfolder.RunFolder(run).read_metrics()[-1]
    assert final["kind"] == "final" and final["step"] == step + 7 and final["stop"] == "steps"


@pytest.mark.parametrize("second_at", ["step", "save"])
def test_a_second_ctrl_c_aborts_at_once_and_keeps_the_last_checkpoint(
    tmp_path, monkeypatch, second_at
):
    """The first Ctrl-C asks for a clean stop: finish the step, save, exit 130. A second one, in
    that step or while its checkpoint is being written, aborts at once (exit 130, "interrupted"):
    the half-written file is removed and the previous checkpoint stays, and --resume goes on."""
    (tmp_path / "tiny.txt").write_text(TEXT)
    run = tmp_path / "run"
    reads = [0]
    real_window, real_fsync = nextchar.data.Streams.window, os.fsync

    def window(self, index):  # the 13th window is read in step 13
        reads[0] += 1
        if reads[0] == 13:
            os.kill(os.getpid(), signal.SIGINT)
            if second_at == "step":
                os.kill(os.getpid(), signal.SIGINT)
        return real_window(self, index)

    def fsync(fd):
        if reads[0] >= 13 and ".latest.safetensors.tmp-" in os.readlink(f"/proc/self/fd/{fd}"):
            os.kill(os.getpid(), signal.SIGINT)
        return real_fsync(fd)

    monkeypatch.setattr(nextchar.data.Streams, "window", window)
    monkeypatch.setattr(atomic.os, "fsync", fsync)
    code, err = cli(
        "train",
        tmp_path / "tiny.txt",
        "--out",
        run,
        *TRAIN,
        "--precision",
        "fp32",
        "--steps",
        100,
        "--checkpoint-every",
        5,
        "--eval-every",
        1000,
    )
    assert (code, err) == (130, "nextchar train: interrupted\n")
    assert reads[0] == 13  # nothing ran after the second Ctrl-C
    assert load_checkpoint(run / "latest.safetensors")[1]["step"] == 10
    assert stray_temps(run) == []
    monkeypatch.undo()
    assert nextchar.train(resume=run, steps=20).steps == 20


# ---- SIGKILL inside each step of a checkpoint write -----------------------------------------
# NEXTCHAR_FAULT=POINT:NAME:N (atomic.py) makes the process kill itself at POINT of its N-th
# atomic write of NAME. With a checkpoint every step, latest.safetensors's N-th write is at step N;
# with an evaluation every 4 steps, best.safetensors's 2nd is at step 8 (before latest's 8th).

KILL_FLAGS = [
    *TRAIN,
    "--precision",
    "fp32",
    "--steps",
    12,
    "--eval-every",
    4,
    "--checkpoint-every",
    1,
]


def evals(run: Path) -> list[tuple]:
    return [
        (r["step"], r["val_loss"], r["sample"])
        for r in runfolder.RunFolder(run).read_metrics()
        if r["kind"] == "eval"
    ]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("uninterrupted")
    (folder / "tiny.txt").write_text(TEXT)
    code, err = cli("train", folder / "tiny.txt", "--out", folder / "run", *KILL_FLAGS)
    assert code == 0, err
    assert [e[0] for e in evals(folder / "run")] == [4, 8, 12]
    losses = [e[1] for e in evals(folder / "run")]
    assert losses == sorted(losses, reverse=True)  # so each evaluation writes best.safetensors
    return folder / "run"


@pytest.mark.parametrize(
    "name, point",
    [("latest.safetensors", p) for p in atomic.FAULT_POINTS] + [("best.safetensors", "partial")],
)
@pytest.mark.slow
def test_sigkill_inside_a_checkpoint_write_loses_nothing(tmp_path, uninterrupted, name, point):
    (tmp_path / "tiny.txt").write_text(TEXT)
    run = tmp_path / "run"
    nth = 6 if name == "latest.safetensors" else 2
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "nextchar",
            "train",
            "tiny.txt",
            "--out",
            "run",
            *map(str, KILL_FLAGS),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=dict(os.environ, NEXTCHAR_FAULT=f"{point}:{name}:{nth}"),
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr

    # the last complete checkpoints are in place: the new one only from its rename on
    renamed = atomic.FAULT_POINTS.index(point) >= atomic.FAULT_POINTS.index("renamed")
    latest_step = {"latest.safetensors": 6 if renamed else 5, "best.safetensors": 7}[name]
    assert load_checkpoint(run / "latest.safetensors")[1]["step"] == latest_step
    assert load_checkpoint(run / "best.safetensors")[1]["step"] == 4
    model = load_model(run)[0]
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # where the kill landed: before the rename the new file is a temporary one beside the old
    temps = stray_temps(run)
    if renamed:
        assert temps == []
    else:
        assert [t.name.split("-")[0] for t in temps] == [f".{name}.tmp"]
        complete = (uninterrupted / name).stat().st_size
        size = temps[0].stat().st_size
        # the metadata (times, counters) may differ by a few bytes from the uninterrupted run's
        assert abs(size - (complete // 2 if point == "partial" else complete)) < 100

    resumed = nextchar.train(resume=run)
    assert resumed.steps == 12 and stray_temps(run) == []
    for kept in ("latest.safetensors", "best.safetensors"):  # the run ends as if never killed
        assert_same_tensors(
            load_checkpoint(run / kept)[0], load_checkpoint(uninterrupted / kept)[0]
        )
    assert evals(run) == evals(uninterrupted)
    steps = logged_steps(run)
    assert steps == sorted(set(steps)), "metrics of a lost future were not dropped"


def test_a_write_is_synced_before_its_rename_and_the_folder_after(tmp_path, monkeypatch):
    """A kill cannot show a missing fsync (the OS keeps the data); a power cut would. So the order
    of the calls is checked: the temporary file is fsynced, renamed over the old one, then the
    folder is fsynced so that the rename itself is on disk."""
    calls = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst, *args, **kwargs):
        calls.append(("rename", str(src), str(dst)))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", replace)
    folder = tmp_path.resolve()
    target = folder / "latest.safetensors"
    nextchar.checkpoint.save_checkpoint(target, {"w": torch.ones(3)}, {"step": 1})
    temporary = str(folder / f".latest.safetensors.tmp-{os.getpid()}")
    assert calls == [
        ("fsync", temporary),
        ("rename", temporary, str(target)),
        ("fsync", str(folder)),
    ]
    assert load_checkpoint(target)[1]["step"] == 1


def test_stray_partial_temp_files_are_ignored_and_cleaned(tmp_path):
    run = Path(nextchar.train(text=TEXT, out=tmp_path / "run", steps=10, eval_every=5, **TINY).path)
    latest = (run / "latest.safetensors").read_bytes()
    best = (run / "best.safetensors").read_bytes()
    (run / ".latest.safetensors.tmp-123").write_bytes(
        latest[: len(latest) // 2]
    )  # killed mid-write
    (run / ".best.safetensors.tmp-99999").write_bytes(b"\x00" * 10)
    (run / ".metrics.jsonl.tmp-5").write_text('{"kind": "train", "st')
    (run / ".data.tmp-77").mkdir()  # a prepare killed half way
    (run / ".data.tmp-77" / "tokens.bin").write_bytes(b"\x01\x02")

    model = nextchar.load(run)
    assert len(model.generate("The", 10, seed=0)) == 13
    assert load_checkpoint(run / "latest.safetensors")[1]["step"] == 10
    assert (run / "best.safetensors").read_bytes() == best

    assert nextchar.train(resume=run, steps=15).steps == 15
    assert stray_temps(run) == []


# ---- divergence -----------------------------------------------------------------------------


@pytest.fixture
def nan_losses(monkeypatch):
    """Make the training loss NaN at the given training steps (1-based); evaluation is untouched."""
    bad: set[int] = set()
    calls = [0]
    real = torch.nn.functional.cross_entropy

    def cross_entropy(*args, **kwargs):
        loss = real(*args, **kwargs)
        if kwargs.get("reduction") == "sum":  # the trainer's; evaluation asks for "none"
            calls[0] += 1
            if calls[0] in bad:
                return loss * float("nan")
        return loss

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", cross_entropy)
    return bad


def test_a_non_finite_step_is_skipped_and_logged(tmp_path, nan_losses):
    nan_losses.update({12, 13})
    run = nextchar.train(text=TEXT, out=tmp_path / "run", steps=20, eval_every=10, **TINY)
    assert run.steps == 20
    skipped = [r for r in runfolder.RunFolder(run.path).read_metrics() if r["kind"] == "skipped"]
    assert [r["step"] for r in skipped] == [12, 13]
    for name in ("best", "latest"):
        assert all(
            torch.isfinite(t).all()
            for t in model_tensors(run.path / f"{name}.safetensors").values()
        )


def test_repeated_non_finite_steps_stop_with_the_last_good_checkpoint(tmp_path, nan_losses, capsys):
    options = dict(TINY, schedule="constant")  # so the lr does not depend on the planned length
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    (tmp_path / "tiny.txt").write_text(TEXT)
    nan_losses.update(range(26, 1000))
    with pytest.raises(SystemExit) as stop:
        main(
            [
                "train",
                str(tmp_path / "tiny.txt"),
                "--out",
                str(tmp_path / "run"),
                "--steps",
                "60",
                "--eval-every",
                "10",
                "--quiet",
                *flags,
            ]
        )
    err = capsys.readouterr().err
    assert stop.value.code == 1 and len(err.splitlines()) == 1, err
    assert re.search(r"training diverged: 5 non-finite steps in a row (at|by) step 30", err)
    assert "lower learning rate" in err and "--resume" in err and "--lr 0.0033" in err
    run = tmp_path / "run"
    assert load_checkpoint(run / "latest.safetensors")[1]["step"] == 20
    skipped = [r["step"] for r in runfolder.RunFolder(run).read_metrics() if r["kind"] == "skipped"]
    assert skipped == [26, 27, 28, 29, 30]

    # the kept checkpoints are those of the same run stopped cleanly at step 20
    nan_losses.clear()
    clean = nextchar.train(
        text=TEXT, out=tmp_path / "clean", steps=20, eval_every=10, **options
    ).path
    for name in ("best", "latest"):
        assert_same_tensors(
            model_tensors(run / f"{name}.safetensors"), model_tensors(clean / f"{name}.safetensors")
        )
    assert nextchar.train(resume=run, lr=3e-3, steps=30).steps == 30  # and it goes on


def test_non_finite_weights_never_replace_good_ones(tmp_path, monkeypatch):
    real_step = torch.optim.AdamW.step
    calls = [0]

    def step(self, *args, **kwargs):
        result = real_step(self, *args, **kwargs)
        calls[0] += 1
        if calls[0] == 19:  # finite loss and gradient, yet the update overflows
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("inf"))
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    run = tmp_path / "run"
    with pytest.raises(Diverged, match="weights became non-finite by step 20.*lower learning rate"):
        nextchar.train(text=TEXT, out=run, steps=40, eval_every=10, **TINY)
    for name in ("best", "latest"):
        tensors, meta = load_checkpoint(run / f"{name}.safetensors")
        assert meta["step"] == 10
        assert all(torch.isfinite(t).all() for k, t in tensors.items() if k.startswith("model."))


# ---- disk full ------------------------------------------------------------------------------


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture
def finished_run(tmp_path):
    run = Path(nextchar.train(text=TEXT, out=tmp_path / "run", steps=10, eval_every=5, **TINY).path)
    return run, {
        name: (run / name).read_bytes() for name in ("latest.safetensors", "best.safetensors")
    }


def test_disk_full_on_rename_keeps_the_old_checkpoint(finished_run, monkeypatch, capsys):
    run, before = finished_run
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if str(dst).endswith(".safetensors"):
            no_space()
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(SystemExit) as stop:
        main(["train", "--resume", str(run), "--steps", "20", "--quiet"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.splitlines()) == 1, err
    assert "could not write" in err and "No space left on device" in err
    assert "the previous file is unchanged" in err
    for name, data in before.items():
        assert (run / name).read_bytes() == data
    assert stray_temps(run) == []


def test_disk_full_mid_write_leaves_no_partial_file(finished_run, monkeypatch):
    run, before = finished_run
    real_fsync = os.fsync

    def fsync(fd):
        if ".safetensors.tmp-" in os.readlink(f"/proc/self/fd/{fd}"):
            no_space()
        return real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    with pytest.raises(CheckpointWriteError, match="No space left on device"):
        nextchar.train(resume=run, steps=20)
    for name, data in before.items():
        assert (run / name).read_bytes() == data
    assert stray_temps(run) == []
    monkeypatch.undo()
    assert nextchar.train(resume=run, steps=20).steps == 20  # space again: it goes on


def test_disk_full_on_metrics_is_a_clear_error(finished_run, monkeypatch):
    run, before = finished_run

    def open_(path, mode="r", *args, **kwargs):
        if str(path).endswith("metrics.jsonl") and "a" in mode:
            no_space()
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(runfolder, "open", open_, raising=False)
    with pytest.raises(CheckpointWriteError, match="metrics.jsonl: No space left on device"):
        nextchar.train(resume=run, steps=20)
    assert (run / "latest.safetensors").read_bytes() == before["latest.safetensors"]


# ---- how much work a crash can lose ---------------------------------------------------------


def test_default_checkpoint_cadence_bounds_lost_work(tmp_path, monkeypatch):
    """README: a resumable checkpoint every 2 minutes by default, so a crash at any moment loses
    at most that much training. Measured on a virtual clock where a step takes 10 s: the longest
    time between resumable checkpoints (from the start to the first too) is 2 minutes and a step."""
    clock = virtual_clock(10.0, monkeypatch)
    saved = []
    real_save = nextchar.checkpoint.save_checkpoint

    def save_checkpoint(path, tensors, meta):
        if Path(path).name == "latest.safetensors":
            saved.append(clock.now)
        return real_save(path, tensors, meta)

    monkeypatch.setattr(nextchar.checkpoint, "save_checkpoint", save_checkpoint)
    run = nextchar.train(
        text=TEXT, out=tmp_path / "run", steps=60, eval_every=1000, precision="fp32", **TINY
    )
    assert run.steps == 60 and saved[-1] == 600.0
    worst_loss = max(b - a for a, b in zip([0.0, *saved], saved))  # a kill just before a save
    assert worst_loss <= 120 + 10, saved
    assert len(saved) >= 5  # checkpoints came from the cadence, not only the run's end


@pytest.mark.parametrize(
    "every", [{"checkpoint_every_steps": 7, "checkpoint_every": 0.0}, {"checkpoint_every": 1.25}]
)
def test_checkpoints_between_evaluations(tmp_path, monkeypatch, every):
    """Every 7 steps, or every 1.25 s on a virtual clock where a step takes 0.25 s: every 5 steps
    (times that binary floating point holds exactly)."""
    virtual_clock(0.25, monkeypatch)
    saved = []
    real_save = nextchar.checkpoint.save_checkpoint

    def save_checkpoint(path, tensors, meta):
        saved.append((Path(path).name, meta["step"]))
        return real_save(path, tensors, meta)

    monkeypatch.setattr(nextchar.checkpoint, "save_checkpoint", save_checkpoint)
    nextchar.train(
        text=TEXT,
        out=tmp_path / "run",
        steps=30,
        eval_every=1000,
        precision="fp32",
        **TINY,
        **every,
    )
    steps = [step for name, step in saved if name == "latest.safetensors"]
    assert steps == (
        [7, 14, 21, 28, 30] if "checkpoint_every_steps" in every else [5, 10, 15, 20, 25, 30]
    )

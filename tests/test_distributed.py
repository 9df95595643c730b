"""Training across processes: torchrun with gloo over loopback on the CPU, one thread each.

Two processes must reach the weights one process reaches with the same global batch; a killed or
stopped rank must end the run with a clear message and leave a checkpoint that --resume finishes;
and a non-finite loss on one rank must make every rank skip the same step. Last, the code paths
written for GPUs that a CPU can run: the device-side skip (fused optimizer, found_inf) and
checkpoints carrying CUDA state.
"""

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing

import nextchar.trainer as trainer
import plain_loop
import test_trainer
from clock import install as virtual_clock
from nextchar.checkpoint import load_checkpoint, prefixed, save_checkpoint
from nextchar.cli import build_parser
from nextchar.config import SampleConfig
from nextchar.data import load_prepared
from nextchar.errors import Diverged
from nextchar.launch import launch
from nextchar.model import CharRNN
from nextchar.runfolder import RunFolder, load_model
from nextchar.sample import Sampler
from processes import wait_until

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
    "--warmup-steps",
    "5",
    "--sample-chars",
    "20",
    "--log-every",
    "5",
    "--dropout",
    "0",
    "--seed",
    "7",
    "--device",
    "cpu",
    "--quiet",
    # fp32: the 1e-5 agreement below is about the arithmetic of DDP, not bf16 rounding
    "--precision",
    "fp32",
]
OPTIONS = {
    "hidden": 32,
    "layers": 1,
    "embed": 16,
    "batch_size": 4,
    "seq_len": 16,
    "lr": 1e-2,
    "warmup_steps": 5,
    "sample_chars": 20,
    "log_every": 5,
    "dropout": 0.0,
    "seed": 7,
    "device": "cpu",
    "precision": "fp32",
}
ENV = dict(os.environ, OMP_NUM_THREADS="1")


@pytest.fixture
def text_dir(tmp_path) -> Path:
    (tmp_path / "tiny.txt").write_text(TEXT, encoding="utf-8")
    return tmp_path


def single(*args, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nextchar", *map(str, args)],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def torchrun(nproc: int, *args, cwd: Path, env: dict | None = None) -> subprocess.Popen:
    """`torchrun --standalone --nproc-per-node N -m nextchar ARGS` (a free port of its own)."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(nproc),
        "--monitor-interval",
        "0.1",
        "-m",
        "nextchar",
        *map(str, args),
    ]
    return subprocess.Popen(
        cmd, cwd=cwd, env=env or ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, err


def model_tensors(path: Path) -> dict[str, torch.Tensor]:
    tensors, _ = load_checkpoint(path)
    return {k: v for k, v in tensors.items() if k.startswith("model.")}


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def records(run: Path, kind: str) -> list[dict]:
    return [r for r in RunFolder(run).read_metrics() if r.get("kind") == kind]


def worker_pid(agent: subprocess.Popen, rank: int, timeout: float = 60) -> int:
    """The pid of the torchrun worker with RANK=`rank` (a child of the torchrun process)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                environ = (entry / "environ").read_bytes().split(b"\0") if ppid == agent.pid else []
            except (OSError, IndexError, ValueError):
                continue
            if f"RANK={rank}".encode() in environ:
                return int(entry.name)
        time.sleep(0.05)
    raise AssertionError(f"no worker with RANK={rank} under torchrun")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# ---- two processes = one process --------------------------------------------------------------


@pytest.mark.slow
def test_two_processes_reach_the_weights_of_one(text_dir):
    steps = ["--steps", "30"]
    one = single("train", "tiny.txt", "--out", "one", *FLAGS, *steps, cwd=text_dir)
    assert one.returncode == 0, one.stderr
    code, err = finish(
        torchrun(2, "train", "tiny.txt", "--out", "two", *FLAGS, *steps, cwd=text_dir)
    )
    assert code == 0, err
    a, b = (
        model_tensors(text_dir / "one/latest.safetensors"),
        model_tensors(text_dir / "two/latest.safetensors"),
    )
    assert max_difference(a, b) < 1e-5
    # the carried state of all streams, gathered in rank order, is the one process's state
    hidden_one, meta = load_checkpoint(text_dir / "one/latest.safetensors")
    hidden_two, meta_two = load_checkpoint(text_dir / "two/latest.safetensors")
    assert meta_two["world_size"] == 2 and meta_two["step"] == meta["step"] == 30
    for key in ("hidden.h", "hidden.c"):
        assert hidden_two[key].shape == hidden_one[key].shape == (1, 4, 32)
        assert float((hidden_two[key] - hidden_one[key]).abs().max()) < 1e-5
    # only rank 0 logs: one line per log step, and the loss of the global batch
    train_one, train_two = records(text_dir / "one", "train"), records(text_dir / "two", "train")
    assert [r["step"] for r in train_two] == [5, 10, 15, 20, 25, 30]
    assert all(abs(p["loss"] - q["loss"]) < 1e-5 for p, q in zip(train_one, train_two))
    assert len(records(text_dir / "two", "final")) == 1

    # a 2-process checkpoint resumes in one process (the streams' state is whole in it)
    more = ["--steps", "40"]
    assert single("train", "--resume", "one", *more, "--quiet", cwd=text_dir).returncode == 0
    resumed = single("train", "--resume", "two", *more, "--quiet", cwd=text_dir)
    assert resumed.returncode == 0, resumed.stderr
    a, b = (
        model_tensors(text_dir / "one/latest.safetensors"),
        model_tensors(text_dir / "two/latest.safetensors"),
    )
    assert max_difference(a, b) < 1e-5


@pytest.mark.slow
def test_two_processes_match_the_plain_loop_with_ragged_windows(text_dir):
    """Loss scaling across ranks: each rank's summed loss x world / the global count of scored
    targets, averaged by DDP, is the one-process loss. The last window of each epoch has 56 scored
    targets on rank 0 and 53 on rank 1, where a per-rank mean would weigh them wrongly."""
    options = {
        **test_trainer.MODEL,
        **test_trainer.TRAIN,
        **test_trainer.CASES["adamw, decay, clipping, wsd"],
    }
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    code, err = finish(
        torchrun(
            2,
            "train",
            "tiny.txt",
            "--out",
            "two",
            *flags,
            "--steps",
            "30",
            "--precision",
            "fp32",
            "--device",
            "cpu",
            "--quiet",
            cwd=text_dir,
        )
    )
    assert code == 0, err
    run = text_dir / "two"
    config = RunFolder(run).read_config()
    data = load_prepared(run / "data").resplit(config.data.val_frac, config.data.test_frac)
    torch.manual_seed(options["seed"])
    initial = CharRNN(config.model).state_dict()
    model, (h, c) = plain_loop.train(
        initial,
        data.split("train"),
        V=config.model.vocab_size,
        E=options["embed"],
        H=options["hidden"],
        L=options["layers"],
        steps=30,
        **{k: v for k, v in options.items() if k not in ("embed", "hidden", "layers", "seed")},
    )
    tensors, meta = load_checkpoint(run / "latest.safetensors")
    assert meta["world_size"] == 2 and meta["step"] == 30
    # measured: 3.6e-7 (weights), 1.4e-6 of the state's size (the LSTM's cell state grows to 26
    # here); the gradients are summed in another order than in one process
    assert max_difference(prefixed(tensors, "model"), model.state_dict()) < 1e-6
    for got, want in ((tensors["hidden.h"], h), (tensors["hidden.c"], c)):
        assert float(((got - want).abs() / want.abs().clamp(min=1)).max()) < 1e-5


@pytest.mark.slow
def test_batch_not_divisible_by_processes_is_refused(text_dir):
    flags = [f for f in FLAGS]
    flags[flags.index("--batch-size") + 1] = "3"
    code, err = finish(
        torchrun(2, "train", "tiny.txt", "--out", "r", *flags, "--steps", "5", cwd=text_dir)
    )
    assert code != 0
    assert "--batch-size 3 must be divisible by the number of processes (2)" in err


# ---- a rank that dies or hangs --------------------------------------------------------------


@pytest.mark.slow
def test_killed_rank_ends_the_run_and_resume_finishes_it(text_dir):
    args = ["train", "tiny.txt", *FLAGS, "--steps", "400", "--checkpoint-every", "20"]
    reference = torchrun(2, *args, "--out", "reference", cwd=text_dir)
    code, err = finish(reference)
    assert code == 0, err

    run = text_dir / "run"
    proc = torchrun(2, *args, "--out", "run", cwd=text_dir)
    wait_until(lambda: (run / "latest.safetensors").exists(), proc)
    os.kill(worker_pid(proc, 1), signal.SIGKILL)
    code, err = finish(proc)
    assert code != 0  # torchrun noticed and tore the group down
    rank0 = [line for line in err.splitlines() if line.startswith("nextchar train")]
    assert rank0, err  # rank 0 said why, in one line
    assert "lost contact with the other training processes" in rank0[0] or "received" in rank0[0]
    _, meta = load_checkpoint(run / "latest.safetensors")  # intact
    assert 0 < meta["step"] < 400

    code, err = finish(torchrun(2, "train", "--resume", "run", "--quiet", cwd=text_dir))
    assert code == 0, err
    final = records(run, "final")[-1]
    assert final["step"] == records(text_dir / "reference", "final")[-1]["step"] == 400
    a, b = (
        model_tensors(run / "latest.safetensors"),
        model_tensors(text_dir / "reference/latest.safetensors"),
    )
    assert all(torch.isfinite(v).all() for v in a.values())
    assert max_difference(a, b) == 0.0  # the resume point holds everything: the very same weights


@pytest.mark.slow
def test_ctrl_c_stops_every_rank_at_one_step_with_a_checkpoint(text_dir):
    """A terminal's Ctrl-C reaches torchrun and its workers, and torchrun passes it on again."""
    run = text_dir / "run"
    proc = torchrun(
        2,
        "train",
        "tiny.txt",
        "--out",
        "run",
        *FLAGS,
        "--steps",
        "100000",
        "--checkpoint-every",
        "100000",
        cwd=text_dir,
    )
    wait_until(lambda: len(records(run, "train")) >= 2, proc)
    # rank 0 holds the run's lock: a second writer is refused, naming it
    second = single("train", "tiny.txt", "--out", "run", "--force", "--steps", "3", cwd=text_dir)
    assert second.returncode == 2 and "in use by another nextchar process" in second.stderr
    assert f"pid {worker_pid(proc, 0)} on " in second.stderr
    for pid in (worker_pid(proc, 0), worker_pid(proc, 1), proc.pid):
        os.kill(pid, signal.SIGINT)
    code, err = finish(proc)
    assert code != 0
    stops = [line for line in err.splitlines() if line.startswith("nextchar train")]
    assert (
        len(stops) == 2 and stops[0] == stops[1] and "SIGINT received: stopped at step" in stops[0]
    ), err
    _, meta = load_checkpoint(run / "latest.safetensors")
    assert f"stopped at step {meta['step']} and saved" in stops[0]


@pytest.mark.slow
def test_stopped_rank_times_out_with_a_clear_message(text_dir):
    run = text_dir / "run"
    # The timeout holds from the start: rank 1 waits for rank 0 to prepare the run (--eval-chars
    # spares it the timing of an evaluation), which took over 5 s at a load average of 8.
    env = dict(ENV, NEXTCHAR_DIST_TIMEOUT="10")
    proc = torchrun(
        2,
        "train",
        "tiny.txt",
        "--out",
        "run",
        *FLAGS,
        "--steps",
        "100000",
        "--checkpoint-every",
        "100000",
        "--eval-chars",
        "0",
        cwd=text_dir,
        env=env,
    )
    wait_until(lambda: len(records(run, "train")) >= 2, proc)
    rank0, rank1 = worker_pid(proc, 0), worker_pid(proc, 1)
    os.kill(rank1, signal.SIGSTOP)  # alive, holding its sockets open, answering nothing
    stopped = time.monotonic()
    try:
        while alive(rank0) and time.monotonic() - stopped < 120:
            time.sleep(0.05)
        waited = time.monotonic() - stopped
    finally:
        os.kill(rank1, signal.SIGKILL)
    code, err = finish(proc)
    assert code != 0
    # not before the timeout (the first unanswered collective may have begun a step before the
    # SIGSTOP), and long before the default one (1800 s); the margin is for a loaded machine
    assert 9 < waited < 90
    line = next(line for line in err.splitlines() if line.startswith("nextchar train"))
    assert "lost contact with the other training processes" in line
    assert "NEXTCHAR_DIST_TIMEOUT=10s" in line and f"--resume {run.name}" in line


# ---- --time: every rank stops at the same step ----------------------------------------------


def _rank_on_a_clock(
    rank: int, world: int, port: int, folder: str, text: str, seconds_per_step: list[float]
) -> None:
    """A rank whose trainer reads a virtual clock (clock.py) at its own pace; it writes the step
    it stopped at to folder/../rank-N.json."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(world),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        NEXTCHAR_DIST_TIMEOUT="30",
    )
    torch.set_num_threads(1)
    virtual_clock(seconds_per_step[rank])
    result = launch([text], folder, quiet=True, options=dict(OPTIONS, time=20, eval_chars=0))
    (Path(folder).parent / f"rank-{rank}.json").write_text(
        json.dumps({"steps": result.steps, "stop": result.stop_reason})
    )
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # as in _rank below


@pytest.mark.slow
def test_every_rank_stops_together_on_time(text_dir):
    """Each rank decides from its own clock that the time is up; the ranks agree before stopping,
    or the one still stepping would wait for the other forever. On virtual clocks of 1 s and
    1.25 s a step, rank 1 finds --time 20 up after 16 steps, and both stop there."""
    text = str(text_dir / "tiny.txt")
    torch.multiprocessing.spawn(
        _rank_on_a_clock,
        nprocs=2,
        join=True,
        args=(2, _free_port(), str(text_dir / "run"), text, [1.0, 1.25]),
    )
    results = [json.loads((text_dir / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert results == [{"steps": 16, "stop": "time"}] * 2
    assert load_checkpoint(text_dir / "run" / "latest.safetensors")[1]["step"] == 16
    assert records(text_dir / "run", "final")[-1]["stop"] == "time"


# ---- a non-finite loss on one rank ----------------------------------------------------------


class _LossWithInf:
    """F for the trainer whose cross_entropy adds +inf at the given (1-based) calls: the loss is
    infinite while its gradient stays finite, the case a per-rank check gets wrong."""

    def __init__(self, bad_calls):
        self.calls = 0
        self.bad = set(bad_calls)

    def cross_entropy(self, *args, **kwargs):
        self.calls += 1
        loss = torch.nn.functional.cross_entropy(*args, **kwargs)
        return (
            loss + math.inf
            if self.calls in self.bad or "all" in self.bad and self.calls >= 3
            else loss
        )

    def __getattr__(self, name):
        return getattr(torch.nn.functional, name)


def _rank(
    rank: int, world: int, port: int, folder: str, text: str, bad_rank: int, steps: int
) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(world),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    trainer.F = _LossWithInf({4} if rank == bad_rank else ())
    launch([text], folder, quiet=True, options=dict(OPTIONS, steps=steps))
    # Under mp.spawn rank 0 hosts the rendezvous store itself (torchrun keeps it in its agent), and
    # tearing that down at interpreter exit while the peer is still leaving can abort in C++:
    # leave without running the interpreter's teardown once the run has finished.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_inf_loss_on_one_rank_is_skipped_by_every_rank(text_dir, monkeypatch):
    text = str(text_dir / "tiny.txt")
    torch.multiprocessing.spawn(
        _rank, args=(2, _free_port(), str(text_dir / "two"), text, 1, 12), nprocs=2, join=True
    )
    for name, bad in (("one", {4}), ("clean", set())):
        monkeypatch.setattr(trainer, "F", _LossWithInf(bad))
        launch([text], text_dir / name, quiet=True, options=dict(OPTIONS, steps=12))
    two, one, clean = (
        model_tensors(text_dir / n / "latest.safetensors") for n in ("two", "one", "clean")
    )
    assert max_difference(one, clean) > 1e-4  # skipping step 4 matters...
    assert max_difference(two, one) < 1e-5  # ...and both ranks skipped it
    assert [r["step"] for r in records(text_dir / "two", "skipped")] == [4]


# ---- GPU code paths that run on a CPU -------------------------------------------------------


def test_device_side_skip_matches_the_host_side_skip(text_dir, monkeypatch):
    """On CUDA the finite check stays on the device (fused AdamW with found_inf, counts read at
    log steps); forced here on the CPU, it must skip exactly what the host-side check skips."""
    text = str(text_dir / "tiny.txt")
    for defer in (False, True):
        monkeypatch.setattr(trainer, "defers_checks", lambda device, optimizer, defer=defer: defer)
        monkeypatch.setattr(trainer, "F", _LossWithInf({4, 9, 10}))
        launch([text], text_dir / f"defer-{defer}", quiet=True, options=dict(OPTIONS, steps=14))
    host, device = (text_dir / f"defer-{d}" for d in (False, True))
    assert (
        max_difference(
            model_tensors(host / "latest.safetensors"), model_tensors(device / "latest.safetensors")
        )
        < 1e-5
    )
    assert [r["step"] for r in records(host, "skipped")] == [4, 9, 10]
    assert [(r["step"], r["count"]) for r in records(device, "skipped")] == [(5, 1), (10, 2)]

    for defer in (False, True):  # divergence: 5 non-finite steps in a row end the run either way
        monkeypatch.setattr(trainer, "defers_checks", lambda device, optimizer, defer=defer: defer)
        monkeypatch.setattr(trainer, "F", _LossWithInf({"all"}))
        with pytest.raises(Diverged, match="non-finite steps in a row"):
            launch(
                [text], text_dir / f"diverge-{defer}", quiet=True, options=dict(OPTIONS, steps=30)
            )


def test_checkpoint_from_a_gpu_run_resumes_and_samples_on_the_cpu(text_dir, monkeypatch):
    """A CUDA run's checkpoint differs from a CPU run's by its CUDA RNG state and a fused
    optimizer's state: both must load on a machine without a GPU."""
    text = str(text_dir / "tiny.txt")
    monkeypatch.setattr(trainer, "defers_checks", lambda device, optimizer: True)  # as on CUDA
    launch([text], text_dir / "run", quiet=True, options=dict(OPTIONS, steps=10))
    latest = text_dir / "run" / "latest.safetensors"
    tensors, meta = load_checkpoint(latest)
    tensors["rng.cuda"] = torch.zeros(16, dtype=torch.uint8)
    save_checkpoint(latest, tensors, {k: v for k, v in meta.items() if k != "checksum"})

    monkeypatch.setattr(trainer, "defers_checks", lambda device, optimizer: False)
    result = launch(resume=text_dir / "run", quiet=True, options={"steps": 15})
    assert result.steps == 15
    model, vocab, _, _ = load_model(text_dir / "run", "latest", device="cpu")
    assert model.head.weight.device.type == "cpu"
    sample = Sampler(model, vocab).generate(SampleConfig(length=30, seed=1))[0]
    assert len(sample) == 30 and set(sample) <= set(vocab.symbols)


def test_compile_flag():
    parser = build_parser()
    assert parser.parse_args(["train", "--compile"]).compile is True
    assert parser.parse_args(["train", "--no-compile"]).compile is False
    assert parser.parse_args(["train"]).compile is None  # a resumed run keeps its setting

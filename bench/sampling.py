"""Sampling speed of `nextchar sample` against a plain nn.LSTM loop, same run.

    python bench/sampling.py              # speed, on a random 2x512 LSTM
    python bench/sampling.py --run RUN    # and what each --weights format costs in bits/char on RUN

A 2x512 LSTM (vocab 65, embedding 64, random weights) is saved as a run folder. Floors: the
default `--weights auto` >= 0.97x the fastest of fp32, bf16 and int8, for one stream and for 64
(medians of interleaved rounds, `auto`'s timing cache warmed first, as on any run after the first);
one stream >= 5,000 chars/s and 64 streams >= 30,000 chars/s in total on the CPU these floors were
set on; the first character printed within 1.5 s of starting `nextchar sample`. With --run, the last
20,000 characters of the run's text are scored by stepping one character at a time with each
precision's weights, next to the exact fp32 figure.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from common import finish, machine, nextchar, report  # noqa: E402
from nextchar.checkpoint import save_weights, vocab_digest  # noqa: E402
from nextchar.config import DataConfig, ModelConfig, RunConfig, TrainConfig  # noqa: E402
from nextchar.evaluate import EvalResult  # noqa: E402
from nextchar.model import CharRNN  # noqa: E402
from nextchar.runfolder import BEST, RunFolder  # noqa: E402
from nextchar.vocab import Vocab  # noqa: E402

HIDDEN, LAYERS, EMBED = 512, 2, 64


def make_run(folder: Path, hidden: int = HIDDEN) -> Vocab:
    torch.manual_seed(0)
    vocab = Vocab([chr(c) for c in range(32, 97)])
    config = RunConfig(
        DataConfig(),
        ModelConfig(vocab_size=len(vocab), hidden=hidden, layers=LAYERS, embed=EMBED),
        TrainConfig(),
    )
    model = CharRNN(config.model)
    run = RunFolder(folder)
    run.create()
    run.write_setup(config, vocab, "bench/sampling.py")
    nan = float("nan")  # never evaluated, as a run without validation text records it
    save_weights(
        run.file(BEST),
        model.state_dict(),
        step=0,
        val=EvalResult(0, nan, nan, nan, nan),
        vocab=vocab_digest(vocab),
    )
    return vocab


def plain_loop_cps(length: int) -> float:
    """The usual PyTorch sampling loop: nn.LSTM on one character at a time."""
    torch.manual_seed(0)
    embed, lstm, head = (
        nn.Embedding(65, EMBED),
        nn.LSTM(EMBED, HIDDEN, LAYERS, batch_first=True),
        nn.Linear(HIDDEN, 65),
    )
    idx, state = torch.zeros(1, 1, dtype=torch.long), None
    with torch.no_grad():
        started = time.perf_counter()
        for _ in range(length):
            out, state = lstm(embed(idx), state)
            probs = head(out[:, -1]).softmax(-1)
            idx = torch.multinomial(probs, 1)
    return length / (time.perf_counter() - started)


def cli_stream(run: Path, length: int, extra=()) -> tuple[float, float]:
    """(seconds to the first character on stdout, chars/s after it) for `nextchar sample`."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nextchar",
            "sample",
            str(run),
            "--length",
            str(length),
            "--seed",
            "1",
            *extra,
        ],
        stdout=subprocess.PIPE,
    )
    first = proc.stdout.read(1)
    first_at = time.perf_counter()
    rest = proc.stdout.read()
    done = time.perf_counter()
    proc.wait()
    assert first and proc.returncode == 0
    return first_at - started, (len((first + rest).decode()) - 1) / (done - first_at)


def many_streams_cps(run: Path, extra=()) -> float:
    """Total chars/s of `nextchar sample --num-samples 64`, start-up included."""
    started = time.perf_counter()
    nextchar("sample", run, "--length", 2000, "--num-samples", 64, "--seed", 1, *extra)
    return 64 * 2000 / (time.perf_counter() - started)


def stepped_bits(model, ids: torch.Tensor, precision: str) -> float:
    """bits/char of `ids` under a loaded Model, stepped one character at a time."""
    from nextchar.stepping import StepModel

    stepper = StepModel(model.module, precision)
    state = stepper.from_module_hidden(model.module.init_hidden(1))
    total = 0.0
    with torch.inference_mode():
        for t in range(len(ids) - 1):
            logits, state = stepper.step(ids[t : t + 1], state)
            total -= float(logits[0].log_softmax(-1)[ids[t + 1]])
    return total / (len(ids) - 1) / math.log(2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", type=Path, help="a trained run folder to score each precision on")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--native-floors",
        action=argparse.BooleanOptionalAction,
        default=not any(os.environ.get(v) for v in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")),
        help="also the absolute chars/s floors (default: unless an ISA cap is set)",
    )
    args = parser.parse_args()
    print(f"machine: {machine()}")
    if args.run:  # the last 20,000 characters of the run's test split
        from nextchar.api import load

        model = load(args.run)
        ids = torch.from_numpy(
            np.asarray(RunFolder(args.run).training_data().split("test")[-20_000:], dtype=np.int64)
        )
        exact = stepped_bits(model, ids, "fp32")
        report("stepped bits/char, fp32 weights", exact, "bits/char")
        for precision in ("bf16", "int8"):
            bits = stepped_bits(model, ids, precision)
            report(
                f"stepped bits/char, {precision} weights (change {bits - exact:+.4f})",
                bits,
                "bits/char",
            )
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        make_run(run)
        os.environ["NEXTCHAR_CACHE_DIR"] = str(Path(tmp) / "cache")  # this run's own verdicts
        cli_stream(run, 200)  # `auto` times one stream here, once
        nextchar("sample", run, "--length", 10, "--num-samples", 64)  # and 64 streams
        reference = plain_loop_cps(1000)
        report("plain nn.LSTM loop, one stream 2x512", reference, "chars/s")
        formats = ("fp32", "bf16", "int8", "auto")
        one = {f: [] for f in formats}
        many = {f: [] for f in formats}
        latencies = []
        for _ in range(args.rounds):  # interleaved, so drift in machine load hits every format
            for f in formats:
                latency, cps = cli_stream(run, 20_000, ("--weights", f))
                one[f].append(cps)
                if f == "auto":
                    latencies.append(latency)
                many[f].append(many_streams_cps(run, ("--weights", f)))
        one, many = ({f: statistics.median(v) for f, v in d.items()} for d in (one, many))
        for label, speeds, floor in (
            ("one stream", one, 5000),
            ("--num-samples 64, total", many, 30_000),
        ):
            for f in formats[:-1]:
                report(
                    f"nextchar sample --weights {f}, {label} 2x512",
                    speeds[f],
                    "chars/s",
                    reference=reference,
                    ref_name="plain loop",
                )
            fastest = max(formats[:-1], key=speeds.get)
            report(
                f"nextchar sample (default: auto), {label} 2x512",
                speeds["auto"],
                "chars/s",
                reference=speeds[fastest],
                ref_name=f"fastest named ({fastest})",
                ratio_floor=0.97,
                floor=floor if args.native_floors else None,
            )
        report(
            "nextchar sample, first character after start",
            statistics.median(latencies),
            "s",
            floor=1.5,
            floor_is_max=True,
        )
    finish()


if __name__ == "__main__":
    main()

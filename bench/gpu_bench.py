"""GPU figures: `nextchar train` against a bare PyTorch loop, and checkpoints across devices.

    python bench/gpu_bench.py                       # on a CUDA GPU; about 3 minutes
    python bench/gpu_bench.py --device cpu --quick  # a dry run of every step, tiny sizes

For each LSTM (2x512 and 3x1024, embedding 64, batch 64 x seq 128, tinyshakespeare) it measures
training chars/s of `nextchar train` (bf16 autocast around the head, fp32/TF32 recurrence, fused
AdamW, clipping, the streams of data.py) and of the plainest loop on the same GPU: Embedding ->
nn.LSTM -> Linear -> cross_entropy -> Adam in fp32, the whole corpus already on the GPU, carried
hidden state. One line per figure with the ratio nextchar / bare.

Then the round trip: train a few steps on the GPU, load that checkpoint on the CPU (same logits,
a sample), resume it on the CPU; and the other way, CPU -> GPU. Exit status 1 if a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

MODELS = {"2x512": (2, 512), "3x1024": (3, 1024)}
EMBED, BATCH, SEQ = 64, 64, 128


def say(text: str) -> None:
    print(text, flush=True)


def nextchar(*args, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "nextchar", *map(str, args)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done


def steady_chars_per_s(run: Path, skip_s: float) -> float:
    """Training speed from metrics.jsonl, leaving out the first `skip_s` seconds (warm-up)."""
    from nextchar.metrics import TrainRecord
    from nextchar.runfolder import RunFolder

    rows = [r for r in RunFolder(run).read_records() if isinstance(r, TrainRecord)]
    start = next((r for r in rows if r.time >= skip_s), rows[0])
    end = rows[-1]
    if end is start:
        raise RuntimeError(f"{run}: too few log lines to measure a speed")
    return (end.chars - start.chars) / (end.time - start.time)


def time_nextchar(
    data: Path,
    work: Path,
    layers: int,
    hidden: int,
    device: str,
    seconds: float,
    batch: int,
    seq: int,
    embed: int,
    extra: tuple = (),
) -> float:
    run = work / f"run-{layers}x{hidden}{'-'.join(('',) + extra)}"
    nextchar(
        "train",
        data,
        "--out",
        run,
        "--force",
        "--time",
        f"{seconds}s",
        "--layers",
        layers,
        "--hidden",
        hidden,
        "--embed",
        embed,
        "--batch-size",
        batch,
        "--seq-len",
        seq,
        "--log-every",
        10,
        "--eval-every",
        10**9,
        "--checkpoint-every",
        10**9,
        "--sample-chars",
        0,
        "--eval-chars",
        20000,
        "--device",
        device,
        "--quiet",
        *extra,
    )
    return steady_chars_per_s(run, skip_s=min(5.0, seconds / 3))


class Bare(nn.Module):
    def __init__(self, vocab: int, embed: int, hidden: int, layers: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x, state):
        out, state = self.lstm(self.embed(x), state)
        return self.head(out), state


def time_bare(
    tokens: torch.Tensor,
    vocab: int,
    layers: int,
    hidden: int,
    device: str,
    seconds: float,
    batch: int,
    seq: int,
    embed: int,
) -> float:
    """Plain TBPTT over `batch` contiguous streams of the corpus, held on the device."""
    torch.manual_seed(0)
    model = Bare(vocab, embed, hidden, layers).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    per_stream = (len(tokens) - 1) // batch
    streams = tokens[: per_stream * batch + 1].to(device)
    starts = torch.arange(batch, device=device) * per_stream
    offsets = torch.arange(seq + 1, device=device)
    windows = (per_stream - 1) // seq

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    state, step, counted, started = None, 0, 0, None
    warmup = min(3.0, seconds / 3)
    clock = time.perf_counter()
    while True:
        w = step % windows
        if w == 0:
            state = None
        chunk = streams[starts[:, None] + w * seq + offsets[None, :]]  # (B, T+1)
        logits, state = model(chunk[:, :-1], state)
        loss = F.cross_entropy(logits.reshape(-1, vocab), chunk[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        state = tuple(s.detach() for s in state)
        step += 1
        if started is None and time.perf_counter() - clock >= warmup:
            sync()
            started, counted = time.perf_counter(), 0
        elif started is not None:
            counted += 1
            if counted % 20 == 0 and time.perf_counter() - started >= seconds - warmup:
                sync()
                return counted * batch * seq / (time.perf_counter() - started)


def round_trip(data: Path, work: Path, device: str) -> list[str]:
    """GPU checkpoint -> CPU (logits, sample, resume) and CPU checkpoint -> GPU (resume)."""
    from nextchar.checkpoint import load_resume
    from nextchar.runfolder import load_model

    failures = []
    small = [
        "--layers",
        2,
        "--hidden",
        128,
        "--embed",
        32,
        "--batch-size",
        16,
        "--seq-len",
        64,
        "--sample-chars",
        0,
        "--eval-chars",
        5000,
        "--quiet",
    ]
    gpu_run, cpu_run = work / "made-on-gpu", work / "made-on-cpu"
    nextchar("train", data, "--out", gpu_run, "--force", "--steps", 20, "--device", device, *small)
    on_cpu, vocab, _, _ = load_model(gpu_run, "latest", "cpu")
    on_gpu, _, _, _ = load_model(gpu_run, "latest", device)
    ids = torch.tensor([vocab.encode("ROMEO: what light through yonder window breaks?")])
    with torch.inference_mode():
        a = F.log_softmax(on_cpu(ids)[0], -1)
        b = F.log_softmax(on_gpu(ids.to(device))[0], -1).cpu()
    diff = float((a - b).abs().max())
    ok = diff < 1e-2
    say(
        f"checkpoint {device} -> cpu: log-probs max |diff| {diff:.2e} (TF32 on the GPU) "
        f"{'ok' if ok else 'FAILED'}"
    )
    failures += [] if ok else ["logits"]
    sample = nextchar(
        "sample",
        gpu_run,
        "--checkpoint",
        "latest",
        "--device",
        "cpu",
        "--length",
        80,
        "--seed",
        1,
        "--json",
    )
    text = json.loads(sample.stdout)["samples"][0]
    ok = len(text) >= 80 and set(text) <= set(vocab.symbols)
    say(f"checkpoint {device} -> cpu: sample of {len(text)} chars {'ok' if ok else 'FAILED'}")
    failures += [] if ok else ["sample"]
    for name, run, first, then in (
        ("resume", gpu_run, device, "cpu"),
        ("resume", cpu_run, "cpu", device),
    ):
        if run is cpu_run:
            nextchar(
                "train", data, "--out", cpu_run, "--force", "--steps", 20, "--device", "cpu", *small
            )
        done = nextchar(
            "train", "--resume", run, "--steps", 30, "--device", then, "--quiet", check=False
        )
        point = load_resume(run / "latest.safetensors")
        finite = all(bool(torch.isfinite(v).all()) for v in point.model.values())
        ok = done.returncode == 0 and point.loop.step == 30 and finite
        say(
            f"checkpoint {first} -> {then}: {name} from step 20 to {point.loop.step} "
            f"{'ok' if ok else 'FAILED: ' + done.stderr.strip()[-500:]}"
        )
        failures += [] if ok else [f"{name} {first}->{then}"]
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and seconds: a dry run")
    parser.add_argument("--seconds", type=float, default=20.0, help="training time per measurement")
    parser.add_argument(
        "--compile", action="store_true", help="also time nextchar --compile (slow start)"
    )
    args = parser.parse_args()
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        say("no CUDA device: run with --device cpu --quick for a dry run")
        return 2
    models, batch, seq, embed, seconds = MODELS, BATCH, SEQ, EMBED, args.seconds
    if args.quick:
        models, batch, seq, embed, seconds = {"1x32": (1, 32), "2x64": (2, 64)}, 8, 16, 16, 4.0
    if device == "cpu":
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    cudnn = torch.backends.cudnn.version() if device == "cuda" else None
    say(
        f"# torch {torch.__version__}, {name}, cuDNN {cudnn}; batch {batch} x seq {seq}, embed {embed}, "
        f"{seconds:g}s per measurement after warm-up"
    )

    from nextchar.corpus import bundled_path
    from nextchar.data import load_prepared

    failures = []
    with tempfile.TemporaryDirectory(prefix="nextchar-gpu-") as tmp:
        work = Path(tmp)
        data = work / "data"
        nextchar("prepare", bundled_path(), "--out", data)
        prepared = load_prepared(data)
        tokens = torch.from_numpy(prepared.split("train").astype("int64"))
        vocab = len(prepared.vocab)
        for label, (layers, hidden) in models.items():
            ours = time_nextchar(data, work, layers, hidden, device, seconds, batch, seq, embed)
            bare = time_bare(tokens, vocab, layers, hidden, device, seconds, batch, seq, embed)
            say(
                f"{label} LSTM train: nextchar {ours:>12,.0f} chars/s | bare PyTorch {bare:>12,.0f} "
                f"chars/s | ratio {ours / bare:.2f}"
            )
            if args.compile:
                compiled = time_nextchar(
                    data,
                    work,
                    layers,
                    hidden,
                    device,
                    seconds,
                    batch,
                    seq,
                    embed,
                    extra=("--compile",),
                )
                say(
                    f"{label} LSTM train: nextchar --compile {compiled:>12,.0f} chars/s | ratio to "
                    f"bare {compiled / bare:.2f}"
                )
        failures += round_trip(data, work, device)
    say("all checks passed" if not failures else f"FAILED: {', '.join(failures)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

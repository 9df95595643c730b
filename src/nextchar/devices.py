"""Where and how to compute: the torch device from --device, and `auto` precision decided by
timing fp32 and bf16 autocast on this machine with the run's shapes (autotune.py)."""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from . import autotune
from .autotune import Choice
from .config import ModelConfig, TrainConfig
from .errors import UserError
from .model import CharRNN, detach_hidden
from .optimizer import build_optimizer

TRAIN_TIMING_S = 0.3  # seconds of timing per training-precision decision (plus one warm-up each)
EVAL_TIMING_S = 0.15
EVAL_SHAPE = (64, 32)  # streams x characters timed for evaluation (it runs 64 x 256 windows)


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda if present, else mps, else cpu; a named device must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError(
            "--device cuda was asked for but no CUDA GPU is available; use --device cpu"
        )
    if name == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise UserError("--device mps was asked for but MPS is not available; use --device cpu")
    if name not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device must be auto, cpu, cuda or mps, got {name!r}")
    return torch.device(name)


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A NumPy batch on `device`; on CUDA through pinned memory, so the copy does not block."""
    tensor = torch.from_numpy(array)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def autocast(precision: str, device: torch.device):
    """The autocast context for a resolved precision (weights stay fp32; matmuls run in bf16)."""
    if precision == "bf16" and device.type in ("cpu", "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def precision_candidates(device: torch.device) -> tuple[str, ...]:
    return ("fp32", "bf16") if autotune.bf16_possible(device) else ("fp32",)


def _shapes(config: ModelConfig, **more) -> dict:
    return {**dataclasses.asdict(config), **more}


def train_step_seconds(
    config: ModelConfig,
    batch: int,
    seq_len: int,
    device: torch.device,
    precisions: tuple[str, ...],
    budget_s: float = TRAIN_TIMING_S,
) -> dict[str, float]:
    """Seconds per training step (forward with carried state, loss, backward, clip, and the
    trainer's own optimizer) of a freshly initialised model of `config`, for each precision,
    timed in turn."""
    torch.manual_seed(0)
    model = CharRNN(config).to(device).train()
    optimizer = build_optimizer(model, TrainConfig(lr=1e-4))
    ids = torch.randint(config.vocab_size, (batch, seq_len + 1), device=device)
    x, y = ids[:, :-1], ids[:, 1:]
    carried = {p: None for p in precisions}  # each precision carries its own state's dtype

    def step(precision: str) -> None:
        with autocast(precision, device):
            logits, hidden = model(x, carried[precision])  # (B, T, V)
            loss = F.cross_entropy(logits.reshape(-1, config.vocab_size).float(), y.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        carried[precision] = detach_hidden(hidden)

    sync = autotune.synchronizer(device)
    timings = autotune.time_interleaved(
        {p: (lambda p=p: step(p)) for p in precisions}, budget_s, sync
    )
    if len(timings) > 1 and not autotune.clear(timings):
        # The winner again, alone (after a clear win it already ran alone): steps interleaved
        # with another precision's run slower than a training loop's (caches, oneDNN's AMX
        # state), and the budget rule sizes the model from this figure, so an undercount
        # shrinks the model (BENCHMARKS.md, "The budget rule").
        best = min(timings, key=timings.get)
        alone = autotune.time_interleaved(
            {best: lambda: step(best)},
            budget_s / 2,
            sync,
            warm_up=False,  # it has just run
        )
        timings[best] = min(timings[best], alone[best])
    return timings


def train_precision(
    requested: str,
    config: ModelConfig,
    batch: int,
    seq_len: int,
    device: torch.device,
    lost: tuple[str, ...] = (),
) -> Choice:
    """The precision a training step runs in: a named one as it is, `auto` the faster of fp32 and
    bf16 autocast timed on these shapes (bf16 only where the hardware runs it at all). `lost`:
    precisions that lost clearly on a closely related shape, not timed again here."""
    if requested != "auto":
        return Choice(requested, how="named")
    everything = precision_candidates(device)
    candidates = tuple(p for p in everything if p not in lost) or everything
    if len(everything) == 1:
        return Choice("fp32", how="only candidate")
    return autotune.decide(
        "train",
        _shapes(config, batch=batch, seq_len=seq_len),
        device,
        lambda: train_step_seconds(config, batch, seq_len, device, candidates),
    )


def eval_seconds(
    config: ModelConfig,
    device: torch.device,
    precisions: tuple[str, ...],
    budget_s: float = EVAL_TIMING_S,
) -> dict[str, float]:
    """Seconds per forward pass of EVAL_SHAPE (streams x characters) under inference mode, for
    each precision, timed in turn."""
    torch.manual_seed(0)
    model = CharRNN(config).to(device).eval()
    ids = torch.randint(config.vocab_size, EVAL_SHAPE, device=device)

    def forward(precision: str) -> None:
        with torch.inference_mode(), autocast(precision, device):
            model(ids)

    return autotune.time_interleaved(
        {p: (lambda p=p: forward(p)) for p in precisions}, budget_s, autotune.synchronizer(device)
    )


def eval_precision(requested: str, config: ModelConfig, device: torch.device) -> Choice:
    """The precision evaluation runs in: `auto` times a forward pass of 64 streams in fp32 and
    under bf16 autocast (inference only, so it can differ from training's verdict)."""
    if requested != "auto":
        return Choice(requested, how="named")
    candidates = precision_candidates(device)
    if len(candidates) == 1:
        return Choice("fp32", how="only candidate")

    return autotune.decide(
        "eval",
        _shapes(config, streams=EVAL_SHAPE[0], chars=EVAL_SHAPE[1]),
        device,
        lambda: eval_seconds(config, device, candidates),
    )

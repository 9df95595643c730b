"""Checkpoints: the one definition of what a nextchar checkpoint holds, and its safe reading.

A checkpoint is a safetensors file (never pickle) whose metadata entry `nextchar` is JSON with a
checksum over the tensors and the metadata, so a damaged file is refused rather than loaded. Two
kinds, told apart by meta["kind"]:

    latest.safetensors   kind "resume": a ResumePoint, where training continues
      model.NAME           the trained weights (the bare model's state_dict)
      optim.I.KEY          the optimizer's state, flattened: parameter I's KEY (exp_avg, step, ...)
      hidden.h, hidden.c   the carried hidden state, every stream's row (c: LSTM only; none: absent)
      average.NAME         the weight average (with --average, once it has begun)
      rng.cpu, rng.cuda    the random states (rng.cuda: a CUDA run only)
      meta                 LoopState's fields, the optimizer's param_groups, average {kind, count},
                           world_size, batch_size, vocab (vocab_digest of the symbols)

    best.safetensors     kind "weights": the weights in use at the best evaluation
      model.NAME           the average once it has begun, else the trained weights
      meta                 step, val (EvalResult), vocab, average {kind, count}

A model is read from either kind by `read_weights`: the average when the file holds one.
Everything here takes and returns plain data (tensors, dicts, LoopState); the trainer and the run
folder decide which file and what to do with it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .atomic import atomic_write
from .config import ModelConfig
from .errors import UserError
from .evaluate import EvalResult
from .model import CharRNN, parameter_shapes
from .vocab import Vocab

RESUME = "resume"
WEIGHTS = "weights"


@dataclass
class LoopState:
    """The resumable counters of a training loop; saved as fields of a resume point's meta."""

    step: int = 0  # optimizer steps taken, skipped ones included
    elapsed: float = 0.0  # seconds of wall clock over all sessions of the run, at the save
    chars_seen: int = 0  # target characters trained on, over all ranks
    best_val: float = math.inf  # the best validation nats/char so far
    best_result: EvalResult | None = None  # the evaluation that scored best_val
    next_eval_time: float = math.inf  # `elapsed` due for the next timed evaluation (inf: none)
    last_eval_step: int = -1  # the step evaluated last (-1: none yet)
    stalls: int = 0  # evaluations in a row without a new best validation (overfit.py)
    regularised_at: int = 0  # the step --on-overfit regularise switched at (0: not yet)

    def to_meta(self) -> dict[str, Any]:
        """JSON-ready: infinities as null, the result as a dict."""
        meta = asdict(self)
        for name in ("best_val", "next_eval_time"):
            meta[name] = meta[name] if math.isfinite(meta[name]) else None
        meta["best_result"] = self.best_result.to_dict() if self.best_result else None
        return meta

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> LoopState:
        """From a resume point's meta; what older checkpoints lack takes the fresh run's value."""
        fresh = cls()
        best_val, next_eval_time = meta.get("best_val"), meta.get("next_eval_time")
        return cls(
            step=int(meta["step"]),
            elapsed=float(meta["elapsed"]),
            chars_seen=int(meta.get("chars_seen", fresh.chars_seen)),
            best_val=best_val if best_val is not None else fresh.best_val,
            best_result=EvalResult.from_dict(meta["best_result"])
            if meta.get("best_result")
            else None,
            next_eval_time=next_eval_time if next_eval_time is not None else fresh.next_eval_time,
            last_eval_step=int(meta.get("last_eval_step", fresh.last_eval_step)),
            stalls=int(meta.get("stalls", fresh.stalls)),
            regularised_at=int(meta.get("regularised_at", fresh.regularised_at)),
        )


@dataclass
class ResumePoint:
    """Everything latest.safetensors holds (see the module docstring)."""

    model: dict[str, torch.Tensor]  # the bare model's state_dict
    optimizer: dict[str, Any]  # the optimizer's state_dict
    loop: LoopState
    rng_cpu: torch.Tensor
    rng_cuda: torch.Tensor | None = None
    hidden: tuple[torch.Tensor, ...] = ()  # (h,) or (h, c), (L, B, H) each; () when none
    average: dict[str, torch.Tensor] = field(default_factory=dict)  # {} until averaging begins
    average_kind: str | None = None  # "ema" or "swa" when the run averages its weights
    average_count: int = 0  # steps averaged so far
    world_size: int = 1
    batch_size: int | None = None  # None: an old checkpoint
    vocab: str | None = None  # vocab_digest of the run's symbols (None: an old checkpoint)


def vocab_digest(vocab: Vocab) -> str:
    """A short fingerprint of the symbols, kept in checkpoints to catch a swapped vocab.json."""
    return hashlib.blake2b(vocab.to_json().encode(), digest_size=8).hexdigest()


def prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under `prefix.`, with it stripped."""
    cut = len(prefix) + 1
    return {k[cut:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def _average_meta(kind: str | None, count: int) -> dict[str, Any] | None:
    return {"kind": kind, "count": count} if kind is not None else None


def save_resume(path: str | os.PathLike, point: ResumePoint) -> None:
    """Write a resume point (see the module docstring for its layout)."""
    state = point.optimizer
    tensors = {f"model.{k}": v for k, v in point.model.items()}
    for index, entries in state["state"].items():
        for key, value in entries.items():
            tensors[f"optim.{index}.{key}"] = (
                value if torch.is_tensor(value) else torch.tensor(value)
            )
    tensors.update({f"hidden.{k}": t for k, t in zip("hc", point.hidden)})
    tensors.update({f"average.{k}": v for k, v in point.average.items()})
    tensors["rng.cpu"] = point.rng_cpu
    if point.rng_cuda is not None:
        tensors["rng.cuda"] = point.rng_cuda
    meta = {
        "kind": RESUME,
        **point.loop.to_meta(),
        "param_groups": state["param_groups"],
        "average": _average_meta(point.average_kind, point.average_count),
        "world_size": point.world_size,
        "batch_size": point.batch_size,
        "vocab": point.vocab,
    }
    save_checkpoint(path, tensors, meta)


def load_resume(
    path: str | os.PathLike, vocab: str | None = None, batch_size: int | None = None
) -> ResumePoint:
    """Read a resume point; a file of another kind, or (when given) one made with other symbols
    (vocab_digest) or another batch size -> UserError."""
    tensors, meta = load_checkpoint(path)
    if meta.get("kind") != RESUME:
        raise UserError(f"{path} is not a resumable checkpoint")
    if vocab is not None and meta.get("vocab", vocab) != vocab:
        raise UserError(f"{path} was trained with another vocabulary than the run's data")
    if batch_size is not None and meta.get("batch_size") != batch_size:
        raise UserError("--batch-size differs from the run being resumed; keep it the same")
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in prefixed(tensors, "optim").items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    average = meta.get("average") or {}
    hidden = tuple(tensors[f"hidden.{k}"] for k in "hc" if f"hidden.{k}" in tensors)
    return ResumePoint(
        model=prefixed(tensors, "model"),
        optimizer={"state": state, "param_groups": meta.get("param_groups", [])},
        loop=LoopState.from_meta(meta),
        rng_cpu=tensors["rng.cpu"],
        rng_cuda=tensors.get("rng.cuda"),
        hidden=hidden if "hidden.h" in tensors else (),
        average=prefixed(tensors, "average"),
        average_kind=average.get("kind"),
        average_count=int(average.get("count", 0)),
        world_size=meta.get("world_size", 1),
        batch_size=meta.get("batch_size"),
        vocab=meta.get("vocab"),
    )


def save_weights(
    path: str | os.PathLike,
    weights: dict[str, torch.Tensor],
    *,
    step: int,
    val: EvalResult,
    vocab: str,
    average_kind: str | None = None,
    average_count: int = 0,
) -> None:
    """Write the weights to sample and evaluate with (best.safetensors)."""
    save_checkpoint(
        path,
        {f"model.{k}": v for k, v in weights.items()},
        {
            "kind": WEIGHTS,
            "step": step,
            "val": val.to_dict(),
            "vocab": vocab,
            "average": _average_meta(average_kind, average_count),
        },
    )


def read_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The model weights of a checkpoint of either kind, and its meta. A resume point of a run that
    averages its weights holds both: the average is the model."""
    tensors, meta = load_checkpoint(path)
    return prefixed(tensors, "average") or prefixed(tensors, "model"), meta


def weights_fit(weights: dict[str, torch.Tensor], config: ModelConfig) -> bool:
    """Whether `weights` are exactly those of a CharRNN built from `config` (names, shapes, fp32),
    told before anything is built, so a damaged config cannot ask for huge tensors."""
    expected = {k: (shape, torch.float32) for k, shape in parameter_shapes(config).items()}
    return expected == {k: (tuple(v.shape), v.dtype) for k, v in weights.items()}


def build_model(weights: dict[str, torch.Tensor], config: ModelConfig) -> CharRNN:
    """A CharRNN on the CPU, in eval mode, holding `weights` (which must fit it: weights_fit)."""
    model = CharRNN(config)
    model.load_state_dict(weights, strict=True)
    model.eval()
    return model


# ---- the file: safetensors, checksummed metadata, atomic writes -----------------------------


def _checksum(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> str:
    """Over the tensors' names, dtypes, shapes and bytes, and the metadata (but its checksum)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(
        json.dumps({k: v for k, v in meta.items() if k != "checksum"}, sort_keys=True).encode()
    )
    for key in sorted(tensors):
        tensor = tensors[key].contiguous()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(
            tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        )
    return digest.hexdigest()


def save_checkpoint(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    """Tensors (moved to CPU) plus JSON metadata, checksummed, written atomically."""
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = dict(meta, checksum=_checksum(cpu, meta))
    atomic_write(path, st_save(cpu, metadata={"nextchar": json.dumps(meta)}))


def _describe_foreign(head: bytes) -> str | None:
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (a torch.save checkpoint?)"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle"
    return None


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and verify a checkpoint on the CPU. Anything but an intact nextchar file -> UserError."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path} is missing") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    foreign = _describe_foreign(raw[:8])
    if foreign:
        raise UserError(f"{path} is {foreign}, not safetensors; nextchar never unpickles files")
    try:
        tensors = st_load(raw)
        with _SafeMeta(raw) as meta_text:
            meta = json.loads(meta_text)
    except (SafetensorError, ValueError, KeyError, TypeError, OverflowError, RuntimeError):
        raise UserError(
            f"{path} is truncated or corrupted (not a readable safetensors file)"
        ) from None
    if not isinstance(meta, dict) or meta.get("checksum") != _checksum(tensors, meta):
        raise UserError(f"{path} is corrupted (checksum mismatch)")
    return tensors, meta


class _SafeMeta:
    """The `nextchar` metadata string of a safetensors file held in memory."""

    def __init__(self, raw: bytes):
        if len(raw) < 8:
            raise ValueError("too short")
        size = int.from_bytes(raw[:8], "little")
        if size > len(raw) - 8:
            raise ValueError("header past end of file")
        self.header = json.loads(raw[8 : 8 + size])

    def __enter__(self) -> str:
        return self.header["__metadata__"]["nextchar"]

    def __exit__(self, *exc) -> None:
        return None

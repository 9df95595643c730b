"""The runs `nextchar serve` serves: their names, their models loaded and checked, each one's
weight format settled and its batch started, and what GET /v1/models says about them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..api import Model, load
from ..batching import Batcher
from ..config import ServeLimits as Limits
from ..errors import UserError
from ..metrics import EvalRecord, FinalRecord
from ..runfolder import RunFolder
from ..sample import Sampler, check_sample_precision, sample_precision

AUTO_PRECISION_STREAMS = 64  # `auto` picks the weight format that is fastest for this many streams


@dataclass
class Served:
    """One run being served: its model, its batch, and what /v1/models says about it."""

    name: str
    model: Model
    batcher: Batcher
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def vocab(self):
        return self.model.vocab


def _best_val_bits(folder: RunFolder) -> float | None:
    """The run's best validation bits/char: its last final record's, else its best evaluation's."""
    records = folder.read_records()
    finals = [r for r in records if isinstance(r, FinalRecord) and r.val is not None]
    if finals:
        return finals[-1].val.bits_per_char
    evals = [r.val_bpc for r in records if isinstance(r, EvalRecord) and r.val_bpc is not None]
    return min(evals) if evals else None


def named_runs(runs: list[str]) -> list[tuple[str, str]]:
    """RUN or NAME=RUN -> (name, path); a name defaults to the folder's name."""
    named = []
    for item in runs:
        name, sep, path = item.partition("=")
        if not sep or Path(item).exists():
            name, path = Path(item).resolve().name, item
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", name):
            raise UserError(
                f"model name {name!r} (from {item}) must be 1-64 letters, digits, '.', "
                f"'_' or '-'; name it with NAME={path}"
            )
        named.append((name, path))
    names = [n for n, _ in named]
    for name in names:
        if names.count(name) > 1:
            raise UserError(
                f"two runs would both be served as {name!r}; name them apart with NAME=RUN"
            )
    return named


def load_models(
    runs: list[str],
    limits: Limits,
    precision: str = "auto",
    checkpoint: str = "best",
    device: str = "cpu",
    say=lambda line: None,
) -> list[Served]:
    """Load every run (all of them before anything starts), settle each one's weight format and
    start its batch."""
    loaded = []
    for name, path in named_runs(runs):
        model = load(path, checkpoint, device)
        RunFolder(path).check_data()
        check_sample_precision(precision, model.module)
        loaded.append((name, path, model))
    served = []
    for name, path, model in loaded:
        choice = sample_precision(
            precision, model.module, min(AUTO_PRECISION_STREAMS, limits.max_streams)
        )
        m = model.config.model
        info = {
            "name": name,
            "cell": m.cell,
            "layers": m.layers,
            "hidden": m.hidden,
            "embed": m.embed,
            "vocab_size": len(model.vocab),
            "parameters": model.module.num_parameters(),
            "best_val_bits_per_char": _best_val_bits(RunFolder(path)),
            "checkpoint_step": model.meta.get("step"),
            "precision": choice.value,
        }
        batcher = Batcher(
            Sampler(model.module, model.vocab, choice.value), limits.max_streams, name
        )
        served.append(Served(name, model, batcher, info))
        say(
            f"model {name}: {m.cell} {m.layers}x{m.hidden}, {len(model.vocab)} symbols, "
            f"{choice.value} weights ({choice.how}), from {path}"
        )
    return served

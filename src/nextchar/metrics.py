"""metrics.jsonl's records: one frozen dataclass per kind of line, and the line format; and
TrainResult, what a training run returns (its final line's figures, in memory).

Each line is a JSON object whose "kind" names its record; optional fields that are not set are
left out. The run folder (runfolder.py) appends and reads the file through `record_line` and
`parse_record`; the trainer writes the records, and plot, report and the benchmarks read them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

from .evaluate import EvalResult


@dataclass(frozen=True)
class TrainRecord:
    """A log line: the mean training loss since the previous one."""

    kind: ClassVar[str] = "train"
    step: int
    chars: int  # target characters trained on so far, over all ranks
    time: float  # seconds of wall clock, over all sessions of the run
    loss: float  # nats/char
    lr: float
    chars_per_s: float


@dataclass(frozen=True)
class EvalRecord:
    """An evaluation: the scores of the weights in use (without validation text, none) and a
    preview drawn from them."""

    kind: ClassVar[str] = "eval"
    step: int
    chars: int
    time: float
    sample: str
    averaged_steps: int | None = None  # with --average: steps averaged into the weights scored
    val_loss: float | None = None  # nats/char
    val_bpc: float | None = None  # bits/char
    val_accuracy: float | None = None

    @classmethod
    def of(
        cls,
        step: int,
        chars: int,
        time: float,
        sample: str,
        result: EvalResult | None,
        averaged_steps: int | None = None,
    ) -> EvalRecord:
        """From an evaluation's result (None: there was no validation text)."""
        if result is None:
            return cls(step, chars, time, sample, averaged_steps)
        return cls(
            step,
            chars,
            time,
            sample,
            averaged_steps,
            result.nats_per_char,
            result.bits_per_char,
            result.accuracy,
        )


@dataclass(frozen=True)
class FinalRecord:
    """The end of a session of the run: why it stopped, the best validation and the test scores."""

    kind: ClassVar[str] = "final"
    step: int
    chars: int
    time: float
    stop: str  # "steps" or "time"
    val: EvalResult | None  # the best evaluation
    test: EvalResult | None  # the test text scored with the best weights


@dataclass
class TrainResult:
    """What Trainer.fit returns: the final record's figures, the folder and the last preview."""

    folder: Path
    steps: int
    elapsed: float  # seconds of wall clock, over all sessions of the run
    chars_seen: int
    best_val: EvalResult | None
    test: EvalResult | None
    stop_reason: str
    sample: str


@dataclass(frozen=True)
class SkippedRecord:
    """Steps skipped for a non-finite loss or gradient since the previous such record."""

    kind: ClassVar[str] = "skipped"
    step: int
    count: int = 1
    reason: str = "non-finite loss or gradient"


@dataclass(frozen=True)
class RegularisedRecord:
    """--on-overfit regularise switched on: from this step, this dropout and weight decay."""

    kind: ClassVar[str] = "regularised"
    step: int
    time: float
    dropout: float
    weight_decay: float
    val_loss: float  # the last of the evaluations without a new best
    best_val_loss: float


Record = TrainRecord | EvalRecord | FinalRecord | SkippedRecord | RegularisedRecord
RECORDS: dict[str, type] = {
    cls.kind: cls
    for cls in (TrainRecord, EvalRecord, FinalRecord, SkippedRecord, RegularisedRecord)
}
_TYPES = {
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "None": (type(None),),
    "EvalResult": (EvalResult,),
}


def record_line(record: Record) -> str:
    """One line of metrics.jsonl: "kind" first, optional fields that are not set left out."""
    line: dict[str, Any] = {"kind": record.kind}
    for f in fields(record):
        value = getattr(record, f.name)
        if value is None and f.default is None:
            continue
        line[f.name] = value.to_dict() if isinstance(value, EvalResult) else value
    return json.dumps(line)


def parse_record(entry: Any) -> Record | None:
    """A line's JSON object as its record; None for an unknown kind, or a line missing a field its
    kind always has or holding one of another type. Keys no record has are ignored."""
    cls = RECORDS.get(entry.get("kind")) if isinstance(entry, dict) else None
    if cls is None:
        return None
    values = {f.name: entry[f.name] for f in fields(cls) if f.name in entry}
    try:
        for f in fields(cls):
            if "EvalResult" in f.type and isinstance(values.get(f.name), dict):
                values[f.name] = EvalResult.from_dict(values[f.name])
            if f.name in values and not _fits(values[f.name], f.type):
                return None
        return cls(**values)
    except TypeError:  # a field the kind always has is missing (in it or in an EvalResult)
        return None


def _fits(value: Any, annotation: str) -> bool:
    """Whether `value` is of the type a field is annotated with ("int", "float | None", ...)."""
    kinds = tuple(t for name in annotation.split("|") for t in _TYPES[name.strip()])
    return isinstance(value, kinds) and not isinstance(value, bool)

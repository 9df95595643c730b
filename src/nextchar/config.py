"""Configuration as data: one frozen dataclass per concern, JSON round trip, unknown keys rejected.

Standard library only, so `nextchar --help` stays fast.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import operator
import re
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import UserError

FORMAT_VERSION = 1  # of the run folder; a folder with a larger number is refused
CELLS = ("lstm", "gru", "rnn", "rnn-relu")
SCHEDULES = ("cosine", "linear", "constant", "wsd")
OPTIMIZERS = ("adamw", "adam")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16")
AVERAGES = ("none", "ema", "swa")

C = TypeVar("C")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool) or type(value).__name__ == "bool_"  # numpy's too


def _as_int(value: Any) -> int | None:
    """An int (numpy integers welcome) or None; bools and floats are not ints."""
    if _is_bool(value) or isinstance(value, float):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _as_float(value: Any) -> float | None:
    """A finite float from an int or float (numpy's too), or None; bools are not numbers."""
    if _is_bool(value) or not isinstance(value, numbers.Real):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _check_types(config: Any) -> None:
    """Every field of a config dataclass has its declared type, so the CLI, the Python API and
    config.json all pass the same checks: numpy integers become ints, an int becomes a float where
    a float is due; bools are not numbers, floats are not ints, and strings are not numbers."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        kind = f.type.replace(" ", "")
        if kind == "int|None" and value is None:
            continue
        if kind in ("int", "int|None"):
            number, expected = _as_int(value), "a whole number"
        elif kind == "float":
            number, expected = _as_float(value), "a finite number"
        elif kind == "bool":
            number, expected = (bool(value) if _is_bool(value) else None), "true or false"
        else:  # str
            number, expected = (value if isinstance(value, str) else None), "a string"
        if number is None:
            raise UserError(f"{_flag(f.name)} must be {expected}, got {value!r}")
        object.__setattr__(config, f.name, number)


@dataclass(frozen=True)
class DataConfig:
    """How text becomes token splits."""

    val_frac: float = 0.05
    test_frac: float = 0.05
    encoding: str = "utf-8"
    errors: str = "strict"  # or "replace": undecodable bytes become U+FFFD

    def __post_init__(self) -> None:
        _check_types(self)
        _require(0 <= self.val_frac < 1, f"--val-frac must be in [0, 1), got {self.val_frac}")
        _require(0 <= self.test_frac < 1, f"--test-frac must be in [0, 1), got {self.test_frac}")
        _require(self.val_frac + self.test_frac < 0.9,
                 "--val-frac plus --test-frac must leave at least 10% of the text for training")
        _require(self.errors in ("strict", "replace"),
                 f"--errors must be strict or replace, got {self.errors!r}")


@dataclass(frozen=True)
class ModelConfig:
    """The network: input (embedding or one-hot) -> stacked recurrent cell -> linear head."""

    vocab_size: int = 0  # filled in from the data
    cell: str = "lstm"
    embed: int = 0  # 0 = one-hot input, as in the lesson
    hidden: int = 256
    layers: int = 2
    dropout: float = 0.0  # on each recurrent layer's output (between layers and before the head)
    locked_dropout: bool = False  # dropout's mask shared by every time step of a window
    weight_drop: float = 0.0  # DropConnect on the hidden-to-hidden matrices, one mask per window
    embed_drop: float = 0.0  # whole rows of the embedding table (characters) dropped per window

    def __post_init__(self) -> None:
        _check_types(self)
        _require(self.cell in CELLS, f"--cell must be one of {', '.join(CELLS)}, got {self.cell!r}")
        _require(self.hidden >= 1, f"--hidden must be at least 1, got {self.hidden}")
        _require(self.layers >= 1, f"--layers must be at least 1, got {self.layers}")
        _require(self.embed >= 0, f"--embed must be 0 (one-hot) or positive, got {self.embed}")
        _require(0 <= self.dropout < 1, f"--dropout must be in [0, 1), got {self.dropout}")
        _require(0 <= self.weight_drop < 1, f"--weight-drop must be in [0, 1), got {self.weight_drop}")
        _require(0 <= self.embed_drop < 1, f"--embed-drop must be in [0, 1), got {self.embed_drop}")
        _require(self.vocab_size >= 0, f"vocab_size must not be negative, got {self.vocab_size}")


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation: batching, schedule, stopping, evaluation and checkpoint cadence."""

    batch_size: int = 32  # B parallel streams
    seq_len: int = 64  # T characters per window (truncated BPTT length)
    lr: float = 3e-3
    final_lr_frac: float = 0.05  # the schedule decays to lr * final_lr_frac
    schedule: str = "wsd"  # warmup, stable, then decay over the last 20% (schedule.py, BENCHMARKS.md)
    warmup_steps: int = 50
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max global gradient norm; 0 = no clipping
    steps: int = 0  # stop after this many steps (0 = not set)
    epochs: float = 0.0  # stop after this many passes over the training split (0 = not set)
    time: float = 0.0  # stop after this many seconds of wall clock (0 = not set)
    eval_every: int = 0  # steps between evaluations; 0 = about ten per run (at most one per 10 s)
    checkpoint_every: float = 120.0  # seconds between resumable checkpoints (besides evaluations)
    checkpoint_every_steps: int = 0  # or steps, when set
    eval_chars: int = 2_000_000  # cap on characters scored per evaluation (0 = the whole split)
    sample_chars: int = 200  # length of the sample printed at each evaluation
    log_every: int = 10  # steps between metrics.jsonl lines
    max_bad_steps: int = 5  # consecutive non-finite steps before giving up
    seed: int = 1337
    device: str = "auto"
    threads: int = 0  # torch intra-op threads (0 = PyTorch's default)
    compile: bool = False  # torch.compile the model
    precision: str = "auto"  # fp32 | bf16 (autocast; weights stay fp32) | auto: bf16 where the hardware has it
    average: str = "none"  # evaluate and keep averaged weights: ema | swa | none (averaging.py)
    average_start: float = 0.5  # fraction of the run (as the schedule counts it) before averaging starts
    average_decay: float = 0.999  # EMA: a step's weight shrinks by this with every later step

    def __post_init__(self) -> None:
        _check_types(self)
        _require(self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}")
        _require(self.seq_len >= 1, f"--seq-len must be at least 1, got {self.seq_len}")
        _require(self.lr > 0 and math.isfinite(self.lr), f"--lr must be positive, got {self.lr}")
        _require(0 <= self.final_lr_frac <= 1,
                 f"--final-lr-frac must be in [0, 1], got {self.final_lr_frac}")
        _require(self.schedule in SCHEDULES,
                 f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        _require(self.warmup_steps >= 0, f"--warmup-steps must not be negative, got {self.warmup_steps}")
        _require(self.optimizer in OPTIMIZERS,
                 f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        _require(self.weight_decay >= 0, f"--weight-decay must not be negative, got {self.weight_decay}")
        _require(self.grad_clip >= 0, f"--grad-clip must not be negative, got {self.grad_clip}")
        _require(self.steps >= 0, f"--steps must be positive, got {self.steps}")
        _require(self.epochs >= 0, f"--epochs must be positive, got {self.epochs}")
        _require(self.time >= 0, f"--time must be positive, got {self.time}")
        _require(self.eval_every >= 0, f"--eval-every must not be negative, got {self.eval_every}")
        _require(self.checkpoint_every >= 0,
                 f"--checkpoint-every must not be negative, got {self.checkpoint_every}")
        _require(self.eval_chars >= 0, f"--eval-chars must not be negative, got {self.eval_chars}")
        _require(self.sample_chars >= 0, f"--sample-chars must not be negative, got {self.sample_chars}")
        _require(self.log_every >= 1, f"--log-every must be at least 1, got {self.log_every}")
        _require(self.max_bad_steps >= 1, f"max_bad_steps must be at least 1, got {self.max_bad_steps}")
        _require(self.device in DEVICES,
                 f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        _require(self.precision in PRECISIONS,
                 f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        _require(self.threads >= 0, f"--threads must not be negative, got {self.threads}")
        _require(self.average in AVERAGES,
                 f"--average must be one of {', '.join(AVERAGES)}, got {self.average!r}")
        _require(0 <= self.average_start < 1,
                 f"--average-start must be a fraction of the run in [0, 1), got {self.average_start}")
        _require(0 < self.average_decay < 1,
                 f"--average-decay must be in (0, 1), got {self.average_decay}")


@dataclass(frozen=True)
class SampleConfig:
    """How characters are drawn from the model."""

    length: int = 500
    temperature: float = 1.0
    top_k: int | None = None  # None = off
    top_p: float = 1.0  # 1 = off
    greedy: bool = False
    num_samples: int = 1
    seed: int | None = None
    prime: str = ""
    unknown: str = "error"  # what to do with prime characters outside the vocabulary: error | skip

    def __post_init__(self) -> None:
        _check_types(self)
        _require(self.length >= 0, f"--length must not be negative, got {self.length}")
        _require(self.temperature > 0 and math.isfinite(self.temperature),
                 f"--temperature must be positive, got {self.temperature}")
        _require(self.top_k is None or self.top_k >= 1,
                 f"--top-k must be at least 1 (leave it out for no top-k), got {self.top_k}")
        _require(0 < self.top_p <= 1, f"--top-p must be in (0, 1], got {self.top_p}")
        _require(self.num_samples >= 1, f"--num-samples must be at least 1, got {self.num_samples}")
        _require(self.unknown in ("error", "skip"),
                 f"--unknown must be error or skip, got {self.unknown!r}")


@dataclass(frozen=True)
class DynamicConfig:
    """Dynamic evaluation (nextchar.dynamic). The defaults are the best of a sweep on validation
    text (BENCHMARKS.md, "Dynamic evaluation")."""

    lr: float = 0.1  # SGD step on each window's mean loss, in nats
    decay: float = 0.001  # pull towards the trained weights per window
    window: int = 32  # characters scored, then learned from, per step

    def __post_init__(self) -> None:
        _check_types(self)
        _require(self.lr >= 0 and math.isfinite(self.lr),
                 f"--dynamic-lr must be a finite number >= 0, got {self.lr}")
        _require(0 <= self.decay <= 1, f"--dynamic-decay must be in [0, 1], got {self.decay}")
        _require(self.window >= 1, f"--dynamic-window must be at least 1, got {self.window}")


@dataclass(frozen=True)
class ServeLimits:
    """What one request to `nextchar serve` may ask for (docs/serving.md, "Limits")."""

    max_length: int = 5000  # characters generated per sample
    max_text: int = 20_000  # characters of a prime, or of a text to score
    max_streams: int = 128  # samples generated at once per model, over all requests
    max_body: int = 1 << 20  # bytes of a request body
    request_timeout: float = 300.0  # seconds from a request's arrival to its last character

    def __post_init__(self) -> None:
        _check_types(self)
        for name in ("max_length", "max_text", "max_streams", "max_body"):
            _require(getattr(self, name) >= 1, f"{_flag(name)} must be at least 1, got {getattr(self, name)}")
        _require(self.request_timeout > 0, f"--request-timeout must be positive, got {self.request_timeout}")


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def from_dict(cls: type[C], data: dict[str, Any], where: str = "config") -> C:
    """Build `cls` from a dict, refusing keys it does not know (naming them)."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a JSON object for {cls.__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserError(f"{where}: unknown key(s) for {cls.__name__}: {', '.join(unknown)}")
    for f in dataclasses.fields(cls):  # JSON types must match the defaults' (an int stays an int)
        default = f.default
        if default is None or default is dataclasses.MISSING or f.name not in data:
            continue
        kinds = (int, float) if type(default) is float else (type(default),)
        if type(data[f.name]) not in kinds:
            raise UserError(f"{where}: {f.name} must be {type(default).__name__}, "
                            f"got {data[f.name]!r}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise UserError(f"{where}: {exc}") from None


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a training run, saved as config.json in its folder."""

    data: DataConfig
    model: ModelConfig
    train: TrainConfig

    def to_json(self) -> str:
        return json.dumps({"format_version": FORMAT_VERSION, "data": to_dict(self.data),
                           "model": to_dict(self.model), "train": to_dict(self.train)}, indent=2)

    @classmethod
    def from_json(cls, text: str, where: str = "config.json") -> RunConfig:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(raw, dict):
            raise UserError(f"{where} must hold a JSON object")
        version = raw.pop("format_version", None)
        if not isinstance(version, int):
            raise UserError(f"{where} has no format_version: not a nextchar run folder")
        if version > FORMAT_VERSION:
            raise UserError(f"{where} has format version {version}, newer than this nextchar "
                            f"understands ({FORMAT_VERSION}); upgrade nextchar to read it")
        unknown = sorted(set(raw) - {"data", "model", "train"})
        if unknown:
            raise UserError(f"{where}: unknown key(s): {', '.join(unknown)}")
        return cls(data=from_dict(DataConfig, raw.get("data", {}), where),
                   model=from_dict(ModelConfig, raw.get("model", {}), where),
                   train=from_dict(TrainConfig, raw.get("train", {}), where))


_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(s|sec|m|min|h|hr)?\s*$", re.IGNORECASE)
_UNIT_SECONDS = {None: 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hr": 3600.0}


def parse_duration(text: str, flag: str = "--time") -> float:
    """'90' / '90s' / '3m' / '1.5h' -> seconds (positive)."""
    match = _DURATION.match(str(text))
    if not match:
        raise UserError(f"{flag} must be a duration such as 90s, 3m or 1.5h, got {text!r}")
    unit = match.group(2).lower() if match.group(2) else None
    seconds = float(match.group(1)) * _UNIT_SECONDS[unit]
    if seconds <= 0:
        raise UserError(f"{flag} must be longer than zero, got {text!r}")
    return seconds

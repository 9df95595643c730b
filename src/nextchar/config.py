"""Configuration as data: one frozen dataclass per concern, JSON round trip, unknown keys rejected.

Each option is declared here once, as a field made by `option(...)`: its type, default, help
line and choices. The command line's flags are made from these fields (nextchar.cli.options),
and the same checks run for the CLI, the Python API and config.json.

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
# the choice lists, each declared once: config checks, CLI flags and the library read these
CELLS = ("lstm", "gru", "rnn", "rnn-relu")
SCHEDULES = ("cosine", "linear", "constant", "wsd")
OPTIMIZERS = ("adamw", "adam")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16")  # the arithmetic of training and scoring (autocast)
WEIGHT_FORMATS = ("auto", "fp32", "bf16", "int8")  # how the sampler holds the weights
AVERAGES = ("none", "ema", "swa")
ERRORS_POLICIES = ("strict", "replace")  # undecodable bytes: refuse the file, or U+FFFD
UNKNOWN_POLICIES = ("error", "skip")  # characters outside the vocabulary: refuse, or drop
CHECKPOINTS = ("best", "latest")  # the weights a reader loads from a run folder
LESSON_CELLS = ("rnn", "lstm", "gru")  # the lesson's cells (nextchar hihello)
FEEDS = ("char", "sequence")  # the lesson: one character per call, or the whole sequence
API_KEY_ENV = "NEXTCHAR_API_KEY"  # `nextchar serve`'s key when --api-key is not given
DEFAULT_TIME = 180.0  # seconds of a `nextchar train` given no stopping point

C = TypeVar("C")


def option(
    default: Any,
    help: str,
    *,
    choices: tuple[str, ...] = (),
    metavar: str | None = None,
    parse: str | None = None,
    train: Any = dataclasses.MISSING,
    shown: str | None = None,
    steps_field: str | None = None,
) -> Any:
    """A config field that is also a flag: `--field-name`, made by nextchar.cli.options.

    help: what it does, one line; choices: the values it takes (checked here for every caller);
    parse: how the flag reads a value other than by its type, "duration" (90s, 3m, 1.5h) or
    "steps or duration" (500 steps or 10m; `steps_field` holds the steps);
    train: `nextchar train`'s default where it is not the library's;
    shown: the default in --help where the value would not say what it means ("" shows none;
    "{default}" stands for the value)."""
    return dataclasses.field(
        default=default,
        metadata={
            "flag": True,
            "help": help,
            "choices": choices,
            "metavar": metavar,
            "parse": parse,
            "train": train,
            "shown": shown,
            "steps_field": steps_field,
        },
    )


def internal(default: Any) -> Any:
    """A config field that no flag sets: filled in from the data, or a safety limit."""
    return dataclasses.field(default=default, metadata={"flag": False})


def is_option(f: dataclasses.Field) -> bool:
    return bool(f.metadata.get("flag"))


def train_defaults(*classes: type) -> dict[str, Any]:
    """`nextchar train`'s defaults that differ from the library's (an option's `train=`)."""
    return {
        f.name: f.metadata["train"]
        for cls in classes
        for f in dataclasses.fields(cls)
        if is_option(f) and f.metadata["train"] is not dataclasses.MISSING
    }


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def one_of(choices: tuple[str, ...]) -> str:
    """'strict or replace' / 'one of auto, cpu, cuda, mps', for messages."""
    if len(choices) == 2:
        return " or ".join(choices)
    return "one of " + ", ".join(choices)


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


def _check_types(config: Any, prefix: str = "") -> None:
    """Every field of a config dataclass has its declared type, so the CLI, the Python API and
    config.json all pass the same checks: numpy integers become ints, an int becomes a float where
    a float is due; bools are not numbers, floats are not ints, and strings are not numbers. A
    field with choices holds one of them. `prefix`: of the flags' names (dynamic_ for --dynamic-lr)."""
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
            raise UserError(f"{_flag(prefix + f.name)} must be {expected}, got {value!r}")
        choices = f.metadata.get("choices")
        if choices and number not in choices:
            raise UserError(f"{_flag(prefix + f.name)} must be {one_of(choices)}, got {value!r}")
        object.__setattr__(config, f.name, number)


@dataclass(frozen=True)
class DataConfig:
    """How text becomes token splits."""

    val_frac: float = option(0.05, "fraction of the text for validation")
    test_frac: float = option(0.05, "fraction of the text for the test split")
    encoding: str = option("utf-8", "text encoding of the input files")
    errors: str = option(
        "strict",
        "undecodable bytes: strict refuses the file, replace substitutes U+FFFD",
        choices=ERRORS_POLICIES,
    )

    def __post_init__(self) -> None:
        _check_types(self)
        _require(0 <= self.val_frac < 1, f"--val-frac must be in [0, 1), got {self.val_frac}")
        _require(0 <= self.test_frac < 1, f"--test-frac must be in [0, 1), got {self.test_frac}")
        _require(
            self.val_frac + self.test_frac < 0.9,
            "--val-frac plus --test-frac must leave at least 10% of the text for training",
        )


@dataclass(frozen=True)
class ModelConfig:
    """The network: input (embedding or one-hot) -> stacked recurrent cell -> linear head."""

    vocab_size: int = internal(0)  # filled in from the data
    cell: str = option("lstm", "the recurrent cell", choices=CELLS)
    embed: int = option(0, "embedding size; 0 = one-hot input, as in the lesson", train=64)
    hidden: int = option(256, "hidden units per layer", train=384)
    layers: int = option(2, "recurrent layers")
    dropout: float = option(
        0.0, "dropout on each recurrent layer's output (between layers, before the head)"
    )
    locked_dropout: bool = option(
        False, "--dropout's mask the same at every time step of a window (variational dropout)"
    )
    weight_drop: float = option(
        0.0,
        "DropConnect: drop this fraction of the hidden-to-hidden weights, one mask per window",
        metavar="P",
    )
    embed_drop: float = option(
        0.0,
        "drop this fraction of the characters (whole rows of the "
        "embedding table), one mask per window",
        metavar="P",
    )

    def __post_init__(self) -> None:
        _check_types(self)
        _require(self.hidden >= 1, f"--hidden must be at least 1, got {self.hidden}")
        _require(self.layers >= 1, f"--layers must be at least 1, got {self.layers}")
        _require(self.embed >= 0, f"--embed must be 0 (one-hot) or positive, got {self.embed}")
        _require(0 <= self.dropout < 1, f"--dropout must be in [0, 1), got {self.dropout}")
        _require(
            0 <= self.weight_drop < 1, f"--weight-drop must be in [0, 1), got {self.weight_drop}"
        )
        _require(0 <= self.embed_drop < 1, f"--embed-drop must be in [0, 1), got {self.embed_drop}")
        _require(self.vocab_size >= 0, f"vocab_size must not be negative, got {self.vocab_size}")


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation: batching, schedule, stopping, evaluation and checkpoint cadence."""

    batch_size: int = option(32, "parallel streams B")
    seq_len: int = option(64, "window length T (truncated BPTT)")
    lr: float = option(3e-3, "peak learning rate")
    final_lr_frac: float = option(0.05, "the schedule ends at lr x this")
    # wsd: warmup, stable, then decay over the last 20% (schedule.py, BENCHMARKS.md)
    schedule: str = option(
        "wsd",
        "after warmup: wsd (full lr, then linear decay over the last "
        "20%), cosine, linear or constant",
        choices=SCHEDULES,
    )
    warmup_steps: int = option(50, "steps of linear warmup")
    optimizer: str = option("adamw", "the optimizer", choices=OPTIMIZERS)
    weight_decay: float = option(
        0.0, "weight decay of the matrices (not of biases or the embedding table)"
    )
    grad_clip: float = option(1.0, "max global gradient norm; 0 = off")
    steps: int = option(0, "stop after N steps", shown="")  # 0 = not set
    epochs: float = option(0.0, "stop after N passes over the training split", shown="")
    time: float = option(
        0.0,
        "stop after a wall-clock budget: 90s, 3m, 1h",
        parse="duration",
        shown=f"{DEFAULT_TIME / 60:g}m when no stop is given",
    )
    eval_every: int = option(
        0, "steps between evaluations", shown="about 10 per run, at most one per 10 s"
    )  # 0 = that
    checkpoint_every: float = option(
        120.0,
        "resumable checkpoint every N steps or a duration such as 10m (besides evaluations)",
        parse="steps or duration",
        steps_field="checkpoint_every_steps",
    )
    checkpoint_every_steps: int = internal(0)  # --checkpoint-every N, when given in steps
    eval_chars: int = option(
        2_000_000,
        "score at most the first N chars of the val (and test) "
        "split per evaluation; 0 = the whole split",
        shown="what a tenth of the run's time scores, at most {default:,}",
    )
    sample_chars: int = option(200, "length of the sample shown at each evaluation")
    log_every: int = option(10, "steps between metrics.jsonl lines")
    max_bad_steps: int = internal(5)  # consecutive non-finite steps before giving up
    seed: int = option(1337, "the run's random seed (initial weights, dropout masks, samples)")
    device: str = option("auto", "where to train", choices=DEVICES)
    threads: int = option(0, "CPU threads for PyTorch", shown="its own choice")
    compile: bool = option(False, "torch.compile the model (pays off on GPUs, for long runs)")
    precision: str = option(
        "auto",
        "bf16 autocast (weights stay fp32); auto = the faster of the "
        "two, timed here on the run's shapes in about a second and cached",
        choices=PRECISIONS,
    )
    average: str = option(
        "none",
        "evaluate, keep and sample averaged weights: ema (moving "
        "average), swa (plain mean) or none",
        choices=AVERAGES,
    )  # averaging.py
    average_start: float = option(
        0.5,
        "the share of the run (as the schedule counts it) after which averaging starts",
        metavar="FRACTION",
    )
    average_decay: float = option(
        0.999,
        "ema: a step's weight shrinks by D with every later step, so about 1/(1-D) steps count",
        metavar="D",
    )

    def __post_init__(self) -> None:
        _check_types(self)
        _require(self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}")
        _require(self.seq_len >= 1, f"--seq-len must be at least 1, got {self.seq_len}")
        _require(self.lr > 0 and math.isfinite(self.lr), f"--lr must be positive, got {self.lr}")
        _require(
            0 <= self.final_lr_frac <= 1,
            f"--final-lr-frac must be in [0, 1], got {self.final_lr_frac}",
        )
        _require(
            self.warmup_steps >= 0, f"--warmup-steps must not be negative, got {self.warmup_steps}"
        )
        _require(
            self.weight_decay >= 0, f"--weight-decay must not be negative, got {self.weight_decay}"
        )
        _require(self.grad_clip >= 0, f"--grad-clip must not be negative, got {self.grad_clip}")
        _require(self.steps >= 0, f"--steps must be positive, got {self.steps}")
        _require(self.epochs >= 0, f"--epochs must be positive, got {self.epochs}")
        _require(self.time >= 0, f"--time must be positive, got {self.time}")
        _require(self.eval_every >= 0, f"--eval-every must not be negative, got {self.eval_every}")
        _require(
            self.checkpoint_every >= 0,
            f"--checkpoint-every must not be negative, got {self.checkpoint_every}",
        )
        _require(self.eval_chars >= 0, f"--eval-chars must not be negative, got {self.eval_chars}")
        _require(
            self.sample_chars >= 0, f"--sample-chars must not be negative, got {self.sample_chars}"
        )
        _require(self.log_every >= 1, f"--log-every must be at least 1, got {self.log_every}")
        _require(
            self.max_bad_steps >= 1, f"max_bad_steps must be at least 1, got {self.max_bad_steps}"
        )
        _require(self.threads >= 0, f"--threads must not be negative, got {self.threads}")
        _require(
            0 <= self.average_start < 1,
            f"--average-start must be a fraction of the run in [0, 1), got {self.average_start}",
        )
        _require(
            0 < self.average_decay < 1,
            f"--average-decay must be in (0, 1), got {self.average_decay}",
        )


@dataclass(frozen=True)
class SampleConfig:
    """How characters are drawn from the model."""

    prime: str = option("", "text to start from (printed first)", shown="")
    length: int = option(500, "characters to generate")
    temperature: float = option(1.0, "divides the logits: below 1 surer, above 1 wilder")
    top_k: int | None = option(None, "sample from the K most likely", shown="all")  # None = off
    top_p: float = option(
        1.0, "nucleus sampling: the most likely characters that hold this much probability; 1 = off"
    )
    greedy: bool = option(False, "always the most likely character")
    seed: int | None = option(None, "same seed, same text", shown="a random one")
    num_samples: int = option(1, "independent samples drawn in parallel")
    unknown: str = option(
        "error",
        "prime characters outside the vocabulary: refuse (error) or drop (skip)",
        choices=UNKNOWN_POLICIES,
    )

    def __post_init__(self) -> None:
        _check_types(self)
        _require(self.length >= 0, f"--length must not be negative, got {self.length}")
        _require(
            self.temperature > 0 and math.isfinite(self.temperature),
            f"--temperature must be positive, got {self.temperature}",
        )
        _require(
            self.top_k is None or self.top_k >= 1,
            f"--top-k must be at least 1 (leave it out for no top-k), got {self.top_k}",
        )
        _require(0 < self.top_p <= 1, f"--top-p must be in (0, 1], got {self.top_p}")
        _require(self.num_samples >= 1, f"--num-samples must be at least 1, got {self.num_samples}")


@dataclass(frozen=True)
class DynamicConfig:
    """Dynamic evaluation (nextchar.dynamic), flags --dynamic-lr, --dynamic-decay and
    --dynamic-window. The defaults are the best of a sweep on validation text (BENCHMARKS.md,
    "Dynamic evaluation")."""

    lr: float = option(
        0.1, "dynamic evaluation's step size (SGD on each window's mean loss, in nats)"
    )
    decay: float = option(0.001, "pull towards the trained weights per step")
    window: int = option(32, "characters scored, then learned from, per step")

    def __post_init__(self) -> None:
        _check_types(self, "dynamic_")
        _require(
            self.lr >= 0 and math.isfinite(self.lr),
            f"--dynamic-lr must be a finite number >= 0, got {self.lr}",
        )
        _require(0 <= self.decay <= 1, f"--dynamic-decay must be in [0, 1], got {self.decay}")
        _require(self.window >= 1, f"--dynamic-window must be at least 1, got {self.window}")


@dataclass(frozen=True)
class ServeLimits:
    """What one request to `nextchar serve` may ask for (docs/serving.md, "Limits")."""

    max_length: int = option(5000, "characters generated per sample")
    max_text: int = option(20_000, "characters of a prime or of a text to score")
    max_streams: int = option(128, "samples generated at once per model, over all requests")
    max_body: int = option(1 << 20, "bytes of a request body")
    request_timeout: float = option(
        300.0,
        "a request's longest life, from its arrival to its last character: 90s, 5m",
        parse="duration",
        shown="{default:g}s",
    )

    def __post_init__(self) -> None:
        _check_types(self)
        for name in ("max_length", "max_text", "max_streams", "max_body"):
            _require(
                getattr(self, name) >= 1,
                f"{_flag(name)} must be at least 1, got {getattr(self, name)}",
            )
        _require(
            self.request_timeout > 0,
            f"--request-timeout must be positive, got {self.request_timeout}",
        )


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
            raise UserError(
                f"{where}: {f.name} must be {type(default).__name__}, got {data[f.name]!r}"
            )
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
        return json.dumps(
            {
                "format_version": FORMAT_VERSION,
                "data": to_dict(self.data),
                "model": to_dict(self.model),
                "train": to_dict(self.train),
            },
            indent=2,
        )

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
            raise UserError(
                f"{where} has format version {version}, newer than this nextchar "
                f"understands ({FORMAT_VERSION}); upgrade nextchar to read it"
            )
        unknown = sorted(set(raw) - {"data", "model", "train"})
        if unknown:
            raise UserError(f"{where}: unknown key(s): {', '.join(unknown)}")
        return cls(
            data=from_dict(DataConfig, raw.get("data", {}), where),
            model=from_dict(ModelConfig, raw.get("model", {}), where),
            train=from_dict(TrainConfig, raw.get("train", {}), where),
        )


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

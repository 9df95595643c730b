"""Configuration as data: one frozen dataclass per concern, JSON round trip, unknown keys rejected.

Each option is declared here once, as a field made by `option(...)` (fields.py): its type,
default, help line and choices. The command line's flags are made from these fields (nextchar.cli.options),
and the same checks run for the CLI, the Python API and config.json.

Standard library only, so `nextchar --help` stays fast.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from .errors import UserError
from .fields import check_types, flag_name, from_dict, internal, option, require, to_dict
from .schedule import COOLDOWN

FORMAT_VERSION = 1  # of the run folder; a folder with a larger number is refused
# the choice lists, each declared once: config checks, CLI flags and the library read these
CELLS = ("lstm", "gru", "rnn", "rnn-relu")
SCHEDULES = ("cosine", "linear", "constant", "wsd")
OPTIMIZERS = ("adamw", "adam")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16")  # the arithmetic of training and scoring (autocast)
WEIGHT_FORMATS = ("auto", "fp32", "bf16", "int8")  # how the sampler holds the weights
AVERAGES = ("none", "ema", "swa")
ON_OVERFIT = ("nothing", "regularise")  # overfit.py
# what "regularise" turns on (the 10-minute sweep's best, which data-limited budget runs get from
# the start) and after how many evaluations in a row without a new best validation
REGULARISED = {"dropout": 0.3, "weight_decay": 0.2}
STALLS = 3
ERRORS_POLICIES = ("strict", "replace")  # undecodable bytes: refuse the file, or U+FFFD
UNKNOWN_POLICIES = ("error", "skip")  # characters outside the vocabulary: refuse, or drop
CHECKPOINTS = ("best", "latest")  # the weights a reader loads from a run folder
LESSON_CELLS = ("rnn", "lstm", "gru")  # the lesson's cells (nextchar hihello)
FEEDS = ("char", "sequence")  # the lesson: one character per call, or the whole sequence
DEFAULT_EMBED_HIDDEN = 8  # the lesson's hidden width when --embed is set and --hidden is not
API_KEY_ENV = "NEXTCHAR_API_KEY"  # `nextchar serve`'s key when --api-key is not given
DEFAULT_TIME = 180.0  # seconds of a `nextchar train` given no stopping point


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
        check_types(self)
        require(0 <= self.val_frac < 1, f"--val-frac must be in [0, 1), got {self.val_frac}")
        require(0 <= self.test_frac < 1, f"--test-frac must be in [0, 1), got {self.test_frac}")
        require(
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
        check_types(self)
        require(self.hidden >= 1, f"--hidden must be at least 1, got {self.hidden}")
        require(self.layers >= 1, f"--layers must be at least 1, got {self.layers}")
        require(self.embed >= 0, f"--embed must be 0 (one-hot) or positive, got {self.embed}")
        require(0 <= self.dropout < 1, f"--dropout must be in [0, 1), got {self.dropout}")
        require(
            0 <= self.weight_drop < 1, f"--weight-drop must be in [0, 1), got {self.weight_drop}"
        )
        require(0 <= self.embed_drop < 1, f"--embed-drop must be in [0, 1), got {self.embed_drop}")
        require(self.vocab_size >= 0, f"vocab_size must not be negative, got {self.vocab_size}")


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation: batching, schedule, stopping, evaluation and checkpoint cadence."""

    batch_size: int = option(32, "parallel streams B")
    seq_len: int = option(64, "window length T (truncated BPTT)")
    lr: float = option(3e-3, "peak learning rate")
    final_lr_frac: float = option(0.05, "the schedule ends at lr x this")
    # wsd: warmup, stable, then decay over the last --cooldown (schedule.py, BENCHMARKS.md)
    schedule: str = option(
        "wsd",
        "after warmup: wsd (full lr, then linear decay over the last --cooldown of the run), "
        "cosine, linear or constant",
        choices=SCHEDULES,
    )
    cooldown: float = option(COOLDOWN, "the share of the run over which wsd decays")
    warmup_steps: int = option(50, "steps of linear warmup")
    optimizer: str = option("adamw", "the optimizer", choices=OPTIMIZERS)
    weight_decay: float = option(
        0.0, "weight decay of the matrices (not of biases or the embedding table)"
    )
    on_overfit: str = option(
        "nothing",
        f"regularise: after {STALLS} evaluations in a row without a new best validation, train "
        f"on with dropout {REGULARISED['dropout']:g} and weight decay "
        f"{REGULARISED['weight_decay']:g}",
        choices=ON_OVERFIT,
        shown="regularise for a --time run the budget calls compute-limited, else nothing",
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
        check_types(self)
        require(self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}")
        require(self.seq_len >= 1, f"--seq-len must be at least 1, got {self.seq_len}")
        require(self.lr > 0 and math.isfinite(self.lr), f"--lr must be positive, got {self.lr}")
        require(
            0 <= self.final_lr_frac <= 1,
            f"--final-lr-frac must be in [0, 1], got {self.final_lr_frac}",
        )
        require(0 < self.cooldown <= 1, f"--cooldown must be in (0, 1], got {self.cooldown}")
        require(
            self.warmup_steps >= 0, f"--warmup-steps must not be negative, got {self.warmup_steps}"
        )
        require(
            self.weight_decay >= 0, f"--weight-decay must not be negative, got {self.weight_decay}"
        )
        require(self.grad_clip >= 0, f"--grad-clip must not be negative, got {self.grad_clip}")
        require(self.steps >= 0, f"--steps must be positive, got {self.steps}")
        require(self.epochs >= 0, f"--epochs must be positive, got {self.epochs}")
        require(self.time >= 0, f"--time must be positive, got {self.time}")
        require(self.eval_every >= 0, f"--eval-every must not be negative, got {self.eval_every}")
        require(
            self.checkpoint_every >= 0,
            f"--checkpoint-every must not be negative, got {self.checkpoint_every}",
        )
        require(self.eval_chars >= 0, f"--eval-chars must not be negative, got {self.eval_chars}")
        require(
            self.sample_chars >= 0, f"--sample-chars must not be negative, got {self.sample_chars}"
        )
        require(self.log_every >= 1, f"--log-every must be at least 1, got {self.log_every}")
        require(
            self.max_bad_steps >= 1, f"max_bad_steps must be at least 1, got {self.max_bad_steps}"
        )
        require(self.threads >= 0, f"--threads must not be negative, got {self.threads}")
        require(
            0 <= self.average_start < 1,
            f"--average-start must be a fraction of the run in [0, 1), got {self.average_start}",
        )
        require(
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
        check_types(self)
        require(self.length >= 0, f"--length must not be negative, got {self.length}")
        require(
            self.temperature > 0 and math.isfinite(self.temperature),
            f"--temperature must be positive, got {self.temperature}",
        )
        require(
            self.top_k is None or self.top_k >= 1,
            f"--top-k must be at least 1 (leave it out for no top-k), got {self.top_k}",
        )
        require(0 < self.top_p <= 1, f"--top-p must be in (0, 1], got {self.top_p}")
        require(self.num_samples >= 1, f"--num-samples must be at least 1, got {self.num_samples}")


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
        check_types(self, "dynamic_")
        require(
            self.lr >= 0 and math.isfinite(self.lr),
            f"--dynamic-lr must be a finite number >= 0, got {self.lr}",
        )
        require(0 <= self.decay <= 1, f"--dynamic-decay must be in [0, 1], got {self.decay}")
        require(self.window >= 1, f"--dynamic-window must be at least 1, got {self.window}")


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
        check_types(self)
        for name in ("max_length", "max_text", "max_streams", "max_body"):
            require(
                getattr(self, name) >= 1,
                f"{flag_name(name)} must be at least 1, got {getattr(self, name)}",
            )
        require(
            self.request_timeout > 0,
            f"--request-timeout must be positive, got {self.request_timeout}",
        )


@dataclass(frozen=True)
class LessonConfig:
    """One lesson run. embed == 0 and hidden == 0 is the classic lesson model."""

    text: str = option("hihello", "the word to learn (input text[:-1], target text[1:])")
    cell: str = option("rnn", "the recurrent cell", choices=LESSON_CELLS)
    feed: str = option(
        "char",
        "one character per call, hidden carried (the lesson), or the whole sequence in one call",
        choices=FEEDS,
    )
    embed: int = option(0, "embedding size (0: one-hot input, the lesson)")
    hidden: int = option(
        0,
        "hidden size with a linear head (0: as many as classes, the lesson; "
        f"{DEFAULT_EMBED_HIDDEN} with --embed)",
    )
    epochs: int = option(15, "epochs, one printed line each")
    lr: float = option(0.1, "Adam's learning rate")
    seed: int = option(
        16, "the random seed (16 reaches ihello at epoch 6 and keeps it: docs/lesson.md)"
    )

    def __post_init__(self) -> None:
        check_types(self)
        require(
            len(self.text) >= 2,
            f"--text must have at least 2 characters (an input and a target), got {self.text!r}",
        )
        require(self.embed >= 0, f"--embed must be 0 (one-hot) or positive, got {self.embed}")
        require(
            self.hidden >= 0, f"--hidden must be 0 (as the lesson) or positive, got {self.hidden}"
        )
        require(self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}")
        require(self.lr > 0, f"--lr must be a positive number, got {self.lr}")


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

"""--time T -> model width, learning rate and regularisation, from what T buys on this machine.

A training step's work grows with the parameter count, so measured training throughput times
parameters, K (parameter-characters per second), is about the same for every width on one
machine. The budget buys K * tau of it (tau: the share of T left after evaluations, saving and
start-up), and the rule spends it like this (fit on the sweeps in BENCHMARKS.md, "The budget
rule"):

    P     = sqrt(K * tau / CHARS_PER_PARAM)    parameters, so the run sees that many chars each
    if that run would pass over the training text more than DATA_LIMITED_EPOCHS times, data, not
    compute, is the limit: a larger model with dropout and weight decay instead of more passes,
    DATA_LIMITED_SCALE times larger at most, and never so large that the budget shows it the
    text fewer than DATA_LIMITED_PASSES times (just past the line, 2.5x left it under-trained)
    width = the one on WIDTHS whose parameter count is nearest P (in ratio); a precision that
            lost clearly at the probe is not timed again at the next width
    batch = SMALL_BATCH streams instead of the default 32 when the run is compute-limited and
            they run at least SMALL_BATCH_SPEED of its characters per second at that width (timed
            here, without a precision that lost clearly at 32): twice the optimizer steps for the
            same characters, which pays only where they cost (almost) no speed
    lr    = 3e-3 up to 384 wide (768 with dropout), 2e-3 above, and 2e-3 at SMALL_BATCH (the 3-
            and 10-minute sweeps)
    and a compute-limited run gets --on-overfit regularise: the data-limited run's dropout and
    weight decay once validation stops improving, for texts learnt by heart in fewer passes than
    tinyshakespeare (overfit.py)

A slower machine gets a smaller model, a faster one (or a GPU) a larger one. Options the user
names are kept; only the rest are chosen. Runs stopped by --steps or --epochs alone keep fixed
defaults, so a step count means the same model on every machine.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

from . import autotune, devices
from .autotune import Choice
from .config import REGULARISED, ModelConfig, TrainConfig  # REGULARISED: the 10-minute sweep's best
from .fields import train_defaults
from .model import parameter_shapes

WIDTHS = (128, 192, 256, 320, 384, 448, 512, 640, 768, 1024, 1280, 1536, 2048)
PROBE_WIDTH = 256  # the width timed first, to measure K
CHARS_PER_PARAM = 3.0  # characters per parameter at the validation optimum (BENCHMARKS.md)
DATA_LIMITED_EPOCHS = 5.5  # passes over the training split beyond which data is the limit
DATA_LIMITED_SCALE = 2.5  # how much larger the model is made then, at most (768 at 4e13)
DATA_LIMITED_PASSES = 4.0  # the fewest passes the budget must buy that larger model (512 at 1.3e13)
TRAIN_SHARE = 0.85  # of --time spent in training steps (evaluations ~10%, saves and start-up)
SMALL_BATCH = 16  # streams of a compute-limited run where they cost little speed
SMALL_BATCH_SPEED = 0.95  # share of batch 32's chars/s SMALL_BATCH must reach (0.88 lost)
SMALL_BATCH_LR = 2e-3  # the 3-minute runs at SMALL_BATCH (BENCHMARKS.md)
LR, WIDE_LR = 3e-3, 2e-3  # the learning rate up to the width below, and above it
LR_WIDTH = {False: 384, True: 768}  # plain; with dropout (data-limited), which takes LR further
EVAL_SHARE = 0.1  # of a run's wall time that evaluation may take
EVALUATIONS = 12  # about ten during a run, the final one and the test split
EVAL_CHARS = (20_000, 2_000_000)  # the fewest and most characters one evaluation scores
# of `nextchar train`, before the rule chooses (declared on the options in config.py); the
# rule replaces the first two for a --time run, and --steps / --epochs runs keep them, so that a
# step count means the same model on every machine
FIXED_DEFAULTS = {"hidden": train_defaults(ModelConfig)["hidden"], "lr": TrainConfig.lr}
RUN_DEFAULTS = {**train_defaults(ModelConfig, TrainConfig), **FIXED_DEFAULTS}


@dataclass(frozen=True)
class Plan:
    """What the budget rule chose and why; recorded in the run folder's machine.json."""

    options: dict[str, Any]  # the chosen values of the options the user left out
    precision: Choice  # training precision at the chosen shape
    param_chars_per_s: float = 0.0  # K, measured
    target_params: float = 0.0
    params: int = 0
    chars: float = 0.0  # characters the budget is expected to buy
    epochs: float = 0.0
    data_limited: bool = False
    batch: int = 0  # the streams it trains with
    batch_speeds: dict[str, float] = dataclasses.field(default_factory=dict)  # chars/s by batch
    probe_width: int = 0  # the width timed first, to measure K
    probe_speeds: dict[str, float] = dataclasses.field(default_factory=dict)  # its chars/s

    def to_dict(self) -> dict[str, Any] | None:
        """The record of a --time plan (its precision is recorded beside it), None otherwise."""
        if not self.params:
            return None
        record = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        del record["precision"]
        return record


def describe(plan: dict[str, Any], model: ModelConfig) -> str:
    """One line on what a recorded plan (Plan.to_dict) chose and why."""
    regime = (
        "data-limited: a larger model with dropout"
        if plan["data_limited"]
        else "compute-limited"
        + (", dropout once validation stalls" if plan["options"].get("on_overfit") else "")
    )
    batch = ""
    if len(plan.get("batch_speeds") or {}) > 1:
        timed = ", ".join(f"{b} {v / 1000:.1f}k" for b, v in plan["batch_speeds"].items())
        batch = f"; batch {plan['batch']} (measured chars/s by batch: {timed})"
    probe = ""
    if plan.get("probe_speeds"):  # by precision, fastest first
        timed = sorted(plan["probe_speeds"].items(), key=lambda kv: -kv[1])
        speeds = ", ".join(f"{p} {v / 1000:.1f}k" for p, v in timed)
        probe = f" at {model.layers}x{plan['probe_width']}: {speeds} chars/s,"
    return (
        f"budget: {model.layers}x{model.hidden} {model.cell}, {plan['params'] / 1e6:.2f} M "
        f"parameters (measured{probe} {plan['param_chars_per_s'] / 1e9:.2f} G parameter-chars/s buys "
        f"~{plan['chars'] / 1e6:.1f} M chars, {plan['epochs']:.1f} passes over the training "
        f"text; {regime}{batch})"
    )


def eval_chars(run_seconds: float, eval_chars_per_s: float) -> int:
    """Characters one evaluation may score so that all of a run's evaluations take about
    EVAL_SHARE of its wall time (within EVAL_CHARS)."""
    affordable = EVAL_SHARE * run_seconds / EVALUATIONS * eval_chars_per_s
    return int(min(max(affordable, EVAL_CHARS[0]), EVAL_CHARS[1]))


def num_params(config: ModelConfig) -> int:
    return sum(math.prod(shape) for shape in parameter_shapes(config).values())


def spend(k: float, seconds: float, train_chars: int, params_of) -> tuple[int, bool, float]:
    """The rule itself, on a measured K: -> (width, data-limited?, target parameters)."""
    target = math.sqrt(k * seconds * TRAIN_SHARE / CHARS_PER_PARAM)
    epochs = CHARS_PER_PARAM * target / max(1, train_chars)
    data_limited = epochs > DATA_LIMITED_EPOCHS
    if data_limited:
        # the model the budget shows DATA_LIMITED_PASSES passes: 1.4x target just past the line
        passes_bound = k * seconds * TRAIN_SHARE / (DATA_LIMITED_PASSES * max(1, train_chars))
        target = min(target * DATA_LIMITED_SCALE, passes_bound)
    width = min(WIDTHS, key=lambda w: abs(math.log(params_of(w) / target)))
    return width, data_limited, target


def _speed(
    precision: str,
    config: ModelConfig,
    batch: int,
    seq_len: int,
    device: torch.device,
    lost: tuple[str, ...] = (),
) -> tuple[Choice, float]:
    """The precision a training step of these shapes runs in (timed, or cached; `lost` are not
    timed) -> (that choice, its training chars/s)."""
    choice = devices.train_precision(precision, config, batch, seq_len, device, lost)
    if not choice.timings:  # named, or the only candidate: time it alone (and keep why it runs)
        timings = devices.train_step_seconds(config, batch, seq_len, device, (choice.value,))
        choice = Choice(choice.value, timings, choice.how)
    return choice, batch * seq_len / choice.timings[choice.value]


def plan(
    options: dict[str, Any],
    model: ModelConfig,
    batch: int,
    seq_len: int,
    train_chars: int,
    device: torch.device,
    precision: str,
) -> Plan:
    """Choose the options the user left out (`options`: those named) for a --time budget, timing
    on this machine; `model` has the user's values, plain defaults for the rest, the vocab size."""
    seconds = options.get("time") or 0.0
    if not seconds:
        return _fixed_plan(options, model, batch, seq_len, device, precision)

    def speed(width: int, streams: int = batch, lost: tuple = ()) -> tuple[Choice, float]:
        shape = dataclasses.replace(model, hidden=width)
        return _speed(precision, shape, streams, seq_len, device, lost)

    def params_of(width: int) -> int:
        return num_params(dataclasses.replace(model, hidden=width))

    fixed_width = "hidden" in options
    probe = options["hidden"] if fixed_width else PROBE_WIDTH
    choice, chars_per_s = speed(probe)
    probe_speeds = {p: batch * seq_len / s for p, s in choice.timings.items()}  # by precision
    # a clear loser is not timed again at a neighbouring shape (the next width, half the batch)
    lost = autotune.clear_losers(choice.timings)
    k = chars_per_s * params_of(probe)
    width, data_limited, target = spend(k, seconds, train_chars, params_of)
    if fixed_width:
        width = options["hidden"]
    elif width != probe:
        if abs(WIDTHS.index(width) - WIDTHS.index(probe)) > 1:
            lost = ()  # far from the probe (a GPU, a data-limited run): time every precision
        choice, chars_per_s = speed(width, batch, lost)  # the real shape's own verdict
        lost += autotune.clear_losers(choice.timings)
    chosen: dict[str, Any] = {} if fixed_width else {"hidden": width}
    speeds = {str(batch): chars_per_s}
    if not data_limited and "batch_size" not in options and batch > SMALL_BATCH:
        small_choice, speeds[str(SMALL_BATCH)] = speed(width, SMALL_BATCH, lost)
        if speeds[str(SMALL_BATCH)] >= SMALL_BATCH_SPEED * chars_per_s:
            chosen["batch_size"] = SMALL_BATCH
            choice, chars_per_s = small_choice, speeds[str(SMALL_BATCH)]
    chosen.update(_optimizer_options(options, width, chosen.get("batch_size", batch), data_limited))
    chars = chars_per_s * seconds * TRAIN_SHARE
    return Plan(
        chosen,
        choice,
        param_chars_per_s=k,
        target_params=target,
        params=params_of(width),
        chars=chars,
        epochs=chars / max(1, train_chars),
        data_limited=data_limited,
        batch=chosen.get("batch_size", batch),
        batch_speeds=speeds,
        probe_width=probe,
        probe_speeds=probe_speeds,
    )


def _fixed_plan(
    options: dict[str, Any],
    model: ModelConfig,
    batch: int,
    seq_len: int,
    device: torch.device,
    precision: str,
) -> Plan:
    """A run stopped by --steps or --epochs alone: FIXED_DEFAULTS for what the user left out."""
    chosen = {k: v for k, v in FIXED_DEFAULTS.items() if k not in options}
    shape = dataclasses.replace(model, **{k: v for k, v in chosen.items() if k == "hidden"})
    return Plan(chosen, devices.train_precision(precision, shape, batch, seq_len, device))


def _optimizer_options(
    options: dict[str, Any], width: int, batch: int, data_limited: bool
) -> dict[str, Any]:
    """The learning rate and regularisation the rule gives a width and batch (unless named)."""
    chosen: dict[str, Any] = {}
    if "lr" not in options:
        wide = width > LR_WIDTH[data_limited]
        chosen["lr"] = SMALL_BATCH_LR if batch == SMALL_BATCH else (WIDE_LR if wide else LR)
    if data_limited:
        chosen.update({k: v for k, v in REGULARISED.items() if k not in options})
    elif not {"on_overfit", *REGULARISED} & options.keys():
        chosen["on_overfit"] = "regularise"  # the same, once validation shows the need
    return chosen

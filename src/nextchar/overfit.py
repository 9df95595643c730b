"""--on-overfit regularise: dropout and weight decay once validation stops improving.

How many passes over a text a model takes before it starts to learn it by heart depends on the
text: a compute-limited 2x320 LSTM kept improving on tinyshakespeare for 5.6 passes, but on 1.1 MB
of Python source its validation loss turned up after 2.8 (training loss 0.68 nats/char, validation
1.46; BENCHMARKS.md, "Overfitting"). The budget rule cannot know this before training, so for the
runs it calls compute-limited it lets validation tell: once STALLS evaluations in a row bring no
new best, the rest of the run trains with the regulariser the rule gives data-limited runs
(REGULARISED). Fewer is noise: at a constant learning rate validation wanders, and of 41 recorded
tinyshakespeare runs without dropout, two evaluations in a row without a new best came in 7 that
went on improving, three in a row only in a 10-minute 2x512 run that dropout would have helped.
The switch happens once, on every rank at the same step, is logged in metrics.jsonl (a
"regularised" line) and comes back on resume, as does the count of stalls so far.
"""

from __future__ import annotations

import torch

from .checkpoint import LoopState
from .config import REGULARISED, STALLS  # declared with the option, for its help line
from .evaluate import EvalResult
from .metrics import RegularisedRecord
from .model import CharRNN
from .optimizer import set_weight_decay

LAST_CHANCE = 0.95  # share of the run after which switching would not change it


def stalled(best: float, latest: float | None) -> bool:
    """Whether an evaluation scoring `latest` (None: no validation text) is no new best, `best`
    being the best so far including it."""
    return latest is not None and latest > best


def regularise(model: CharRNN, optimizer: torch.optim.Optimizer) -> None:
    """From now on: REGULARISED's dropout on every layer's output (and between layers), and its
    weight decay on the matrices."""
    model.set_dropout(REGULARISED["dropout"])
    set_weight_decay(optimizer, REGULARISED["weight_decay"])


def check(
    result: EvalResult | None, loop: LoopState, progress: float, elapsed: float
) -> RegularisedRecord | None:
    """After the evaluation that scored `result` (its best already in `loop`; `progress`: the share
    of the run done): count it in loop.stalls -> the record of the switch if it is due now."""
    if loop.regularised_at:
        return None
    latest = result.nats_per_char if result is not None else None
    loop.stalls = loop.stalls + 1 if stalled(loop.best_val, latest) else 0
    if loop.stalls < STALLS or progress >= LAST_CHANCE:
        return None
    drop, decay = REGULARISED["dropout"], REGULARISED["weight_decay"]
    return RegularisedRecord(loop.step, round(elapsed, 3), drop, decay, latest, loop.best_val)


def describe(record: RegularisedRecord) -> str:
    return (
        f"step {record.step}: {STALLS} evaluations without a new best validation (now "
        f"{record.val_loss:.4f}, best {record.best_val_loss:.4f} nats/char); dropout "
        f"{record.dropout:g} and weight decay {record.weight_decay:g} from here on "
        f"(--on-overfit regularise)"
    )

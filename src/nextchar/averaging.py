"""Weight averaging: the weights evaluated, kept as best and sampled are an average of the trained
weights over the steps after a start point, held in a second CharRNN beside the trained one.

    ema: the weights of the n steps so far, step i weighted by decay^(n - i), normalised:
         avg <- avg + (w - avg) * (1 - decay) / (1 - decay^n)
         (an exponential moving average with Adam's bias correction: about the plain mean while
         n is small against 1 / (1 - decay), so the first weights averaged do not linger)
    swa: avg <- avg + (w - avg) / n               the plain mean of the n steps so far
         (stochastic weight averaging, Izmailov et al. 2018, averaged every step)

Both start as a copy of the weights at the first averaged step. The trainer saves the average
(`average.*` tensors) and its count in latest.safetensors, so a resumed run averages on exactly as
the uninterrupted one.
"""

from __future__ import annotations

import copy

import torch

from .config import TrainConfig
from .model import CharRNN


class WeightAverage:
    """An average of `model`'s weights; `module` is a CharRNN (eval mode) holding it."""

    def __init__(self, model: CharRNN, kind: str, decay: float):
        if kind not in ("ema", "swa"):
            raise ValueError(f"no weight average called {kind!r}")
        self.kind = kind
        self.decay = decay
        self.count = 0  # steps averaged so far; 0 = nothing yet (module holds no average)
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @classmethod
    def of(cls, model: CharRNN, train: TrainConfig) -> WeightAverage | None:
        """The average --average asks for, None for "none"."""
        return None if train.average == "none" else cls(model, train.average, train.average_decay)

    @torch.no_grad()
    def update(self, model: CharRNN) -> None:
        """Fold in the weights of `model` after one more step."""
        self.count += 1
        if self.kind == "ema":
            weight = (1.0 - self.decay) / (1.0 - self.decay**self.count)
        else:
            weight = 1.0 / self.count
        for avg, w in zip(self.module.parameters(), model.parameters()):
            if self.count == 1:
                avg.copy_(w)
            else:
                avg.lerp_(w, weight)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The average as state_dict entries (none before the first step averaged)."""
        return dict(self.module.state_dict()) if self.count else {}

    def load(self, tensors: dict[str, torch.Tensor], count: int) -> None:
        """Restore what `tensors` and `count` saved."""
        if count:
            self.module.load_state_dict(tensors)
        self.count = count

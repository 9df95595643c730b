"""What an evaluation during training measures, rank 0 only: the validation text scored, a short
preview drawn, the test text scored at the end. It measures and says; the trainer keeps the best
result and decides what to save.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .config import SampleConfig, TrainConfig
from .data import TokenData
from .evaluate import EvalResult, score_ids
from .model import CharRNN
from .sample import Sampler

PREVIEW_TEMPERATURE = 0.8  # a preview should read like the text, not the model's safest guesses


class Validation:
    """The held-out texts of a run (each cut to --eval-chars when given) and how to score them."""

    def __init__(self, data: TokenData, train: TrainConfig, device: torch.device, precision: str):
        self.val_ids = self._cut(data.split("val"), train.eval_chars)
        self.test_ids = self._cut(data.split("test"), train.eval_chars)
        self.vocab, self.sample_chars, self.seed = data.vocab, train.sample_chars, train.seed
        self.device, self.precision = device, precision

    @staticmethod
    def _cut(ids: np.ndarray, eval_chars: int) -> np.ndarray:
        return ids[:eval_chars] if eval_chars else ids

    def score_val(self, weights: CharRNN) -> EvalResult | None:
        """The validation text's score, None when there is none to score."""
        if len(self.val_ids) < 2:
            return None
        return score_ids(weights, self.val_ids, device=self.device, precision=self.precision)

    def score_test(self, best: Callable[[], CharRNN | None]) -> EvalResult | None:
        """The test text's score with the weights `best()` loads (called only when there is test
        text), None without text or weights."""
        if len(self.test_ids) < 2:
            return None
        weights = best()
        if weights is None:
            return None
        return score_ids(weights, self.test_ids, device=self.device, precision=self.precision)

    def preview(self, weights: CharRNN, step: int) -> str:
        """--sample-chars characters drawn at `step` (a seed of its own), in the fastest format."""
        if self.sample_chars <= 0:
            return ""
        config = SampleConfig(
            length=self.sample_chars, temperature=PREVIEW_TEMPERATURE, seed=self.seed + step
        )
        return Sampler(weights, self.vocab).generate(config)[0]

"""A run's two weight files as the loop sees them: the resume point (latest.safetensors) and the
best weights (best.safetensors).

checkpoint.py owns what the files hold and knows nothing of a model or optimizer; this module is
the step between: it gathers a resume point from the live model, optimizer and weight average,
and puts a saved one back into them. The trainer decides when; the collectives (gathering every
rank's hidden rows) stay with it, so only rank 0 calls the savers here.
"""

from __future__ import annotations

from typing import Any

import torch

from . import checkpoint, overfit
from .averaging import WeightAverage
from .checkpoint import LoopState, ResumePoint, vocab_digest
from .config import ModelConfig
from .errors import UserError
from .evaluate import EvalResult
from .model import CharRNN
from .optimizer import load_state, set_weight_decay
from .runfolder import BEST, LATEST, RunFolder
from .vocab import Vocab


def averaged(average: WeightAverage | None) -> dict[str, Any]:
    """How the weights are averaged, as a checkpoint records it ({} without averaging)."""
    if average is None:
        return {}
    return {"average_kind": average.kind, "average_count": average.count}


class Snapshots:
    """The resume point and the best weights of the run in `folder`, for a model of `vocab` trained
    with `batch_size` streams in all (over every rank)."""

    def __init__(self, folder: RunFolder, vocab: Vocab, batch_size: int, device: torch.device):
        self.folder, self.batch_size, self.device = folder, batch_size, device
        self.vocab = vocab_digest(vocab)

    def save_latest(
        self,
        raw_model: CharRNN,
        optimizer: torch.optim.Optimizer,
        loop: LoopState,
        hidden: tuple[torch.Tensor, ...],  # every rank's rows, (h,) or (h, c); () for none
        average: WeightAverage | None,
        world_size: int,
    ) -> None:
        cuda_rng = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        point = ResumePoint(
            model=raw_model.state_dict(),
            optimizer=optimizer.state_dict(),
            loop=loop,
            rng_cpu=torch.get_rng_state(),
            rng_cuda=cuda_rng,
            hidden=hidden,
            average=average.tensors() if average is not None else {},
            **averaged(average),
            world_size=world_size,
            batch_size=self.batch_size,
            vocab=self.vocab,
        )
        checkpoint.save_resume(self.folder.file(LATEST), point)

    def save_best(
        self, weights: CharRNN, step: int, result: EvalResult, average: WeightAverage | None
    ) -> None:
        """`weights`: those in use (the average once it has begun), scored `result` at `step`."""
        checkpoint.save_weights(
            self.folder.file(BEST),
            weights.state_dict(),
            step=step,
            val=result,
            vocab=self.vocab,
            **averaged(average),
        )

    def restore(
        self,
        raw_model: CharRNN,
        optimizer: torch.optim.Optimizer,
        average: WeightAverage | None,
        weight_decay: float,
    ) -> ResumePoint:
        """Load the resume point's weights, optimizer state and average into the live objects, and
        the random states; -> the point, for its loop counters and hidden state."""
        path = self.folder.file(LATEST)
        point = checkpoint.load_resume(path, vocab=self.vocab, batch_size=self.batch_size)
        try:
            raw_model.load_state_dict(point.model)
            load_state(optimizer, point.optimizer)
            if average is not None and point.average_kind == average.kind:
                average.load(point.average, point.average_count)
            # else: averaging turned on (or changed) by this resume starts afresh
        except (RuntimeError, ValueError, KeyError) as exc:
            raise UserError(f"{path} does not match this run's model ({exc})") from None
        set_weight_decay(optimizer, weight_decay)  # a resume may change it; --lr is set each step
        if point.loop.regularised_at:  # --on-overfit switched before the save: still on
            overfit.regularise(raw_model, optimizer)
        torch.set_rng_state(point.rng_cpu)
        if self.device.type == "cuda" and point.rng_cuda is not None:
            torch.cuda.set_rng_state(point.rng_cuda, self.device)
        return point

    def best_model(self, config: ModelConfig) -> CharRNN | None:
        """The best weights as a model on the run's device, None before the first evaluation."""
        if not self.folder.file(BEST).exists():
            return None
        weights, _ = checkpoint.read_weights(self.folder.file(BEST))
        return checkpoint.build_model(weights, config).to(self.device)

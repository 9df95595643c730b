"""Dynamic evaluation (Krause et al., 2018): keep learning from the text while scoring it.

The text is read once, in order, in windows of W characters with the hidden state carried. Each
window is scored first, with the weights as they are, and only then used for one SGD step on
its mean loss, pulled back towards the trained weights:

    theta <- theta - lr * grad + decay * (theta_trained - theta)

So every character is predicted by weights that have seen only the text before it: the score is
as honest as a static one, and a text that repeats names, words or layout (a play, a code base)
gets cheaper as it goes. The trained model is never changed: a copy adapts. lr = 0 gives the
static score of one long pass exactly (tests/test_dynamic.py).
"""

from __future__ import annotations

import copy
import math
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F

from .config import DynamicConfig
from .evaluate import LN2, EvalResult
from .model import CharRNN, detach_hidden


def score_dynamic(
    model: CharRNN,
    ids: np.ndarray,
    config: DynamicConfig | None = None,
    device: torch.device | str | None = None,
) -> EvalResult:
    """Score every position of `ids` after the first (a 1-D id array) in one stream, adapting a
    copy of `model` after each window. fp32 throughout."""
    n_targets = len(ids) - 1
    if n_targets < 1:
        return EvalResult(0, float("nan"), float("nan"), float("nan"), float("nan"))
    _, nats, right = _read(model, ids, config, device)
    mean = nats / n_targets
    perplexity = math.inf if mean > 709.0 else math.exp(mean)
    return EvalResult(
        chars=n_targets,
        nats_per_char=mean,
        bits_per_char=mean / LN2,
        perplexity=perplexity,
        accuracy=right / n_targets,
    )


def adapt(
    model: CharRNN,
    ids: np.ndarray,
    config: DynamicConfig | None = None,
    device: torch.device | str | None = None,
) -> CharRNN:
    """A copy of `model` that has read `ids` (a 1-D id array, such as a long prime) the way
    dynamic evaluation reads a text: its weights after the last window's step. `model` is not
    changed. Fewer than two ids leave the copy as trained."""
    adapted, _, _ = _read(model, ids, config, device)
    return adapted


def _read(
    model: CharRNN, ids: np.ndarray, config: DynamicConfig | None, device: torch.device | str | None
) -> tuple[CharRNN, float, int]:
    """Dynamic evaluation's pass over `ids`: (the adapted copy, total nats, right guesses)."""
    config = config if config is not None else DynamicConfig()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    n_targets = len(ids) - 1
    adapted = copy.deepcopy(model).float().to(device).eval()  # eval: no dropout while adapting
    trained = [p.detach().clone() for p in adapted.parameters()]
    tokens = torch.from_numpy(np.asarray(ids, dtype=np.int64)).to(device)
    hidden = None
    nats = torch.zeros((), dtype=torch.float64, device=device)
    right = torch.zeros((), dtype=torch.int64, device=device)
    # cuDNN runs an RNN's backward in training mode only; the plain kernels have no such rule
    no_cudnn = torch.backends.cudnn.flags(enabled=False) if device.type == "cuda" else nullcontext()
    with no_cudnn, torch.enable_grad():
        for start in range(0, max(n_targets, 0), config.window):
            stop = min(start + config.window, n_targets)
            x, y = tokens[start:stop][None], tokens[start + 1 : stop + 1]  # (1, W), (W,)
            logits, hidden = adapted(x, hidden)  # (1, W, V)
            losses = F.cross_entropy(logits[0].float(), y, reduction="none")  # (W,)
            nats += losses.detach().sum(dtype=torch.float64)
            right += (logits[0].detach().argmax(-1) == y).sum()
            hidden = detach_hidden(hidden)
            if config.lr == 0:
                continue
            adapted.zero_grad(set_to_none=True)
            losses.mean().backward()
            with torch.no_grad():
                for p, p0 in zip(adapted.parameters(), trained):
                    p.add_(p.grad, alpha=-config.lr)
                    if config.decay:
                        p.add_(p0 - p, alpha=config.decay)
    adapted.zero_grad(set_to_none=True)
    adapted.requires_grad_(False)  # a model to sample from; nothing more is learned
    return adapted, nats.item(), int(right.item())

"""Scoring a text with carried hidden state: nats/char, bits/char, perplexity, accuracy.

The text is cut into S streams scored in parallel, each read in windows with its hidden state
carried. Streams after the first start `burn_in` characters early and do not score those, so
each scored character sees at least that much context; with S = 1 the result equals one long
pass over the whole text.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
import torch.nn.functional as F

from .devices import autocast, eval_precision
from .model import CharRNN

LN2 = math.log(2.0)


@dataclass(frozen=True)
class EvalResult:
    chars: int  # characters scored
    nats_per_char: float
    bits_per_char: float
    perplexity: float
    accuracy: float  # fraction whose most likely next character was right
    unknown_chars: int = 0  # characters of the text outside the vocabulary (not scored)
    unknown_symbols: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, entry: dict) -> EvalResult:
        """From to_dict's output; keys it does not know (from a later version) are ignored."""
        return cls(**{f.name: entry[f.name] for f in fields(cls) if f.name in entry})


def _layout(
    n_targets: int, streams: int, burn_in: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per stream: first position read, count read, index from which reads are scored."""
    streams = max(1, min(streams, n_targets))
    if streams == 1:
        return np.array([0]), np.array([n_targets]), np.array([0])
    # stream 0 scores R targets, the others R - burn: R + (S-1)(R - burn) = n_targets
    scored = np.full(streams, 0, dtype=np.int64)
    total = n_targets + (streams - 1) * burn_in
    base, extra = divmod(total, streams)
    reads = np.full(streams, base, dtype=np.int64)
    reads[:extra] += 1
    scored[0] = reads[0]
    scored[1:] = reads[1:] - burn_in
    starts_scored = np.concatenate([[0], np.cumsum(scored)[:-1]])
    burn = np.where(np.arange(streams) == 0, 0, burn_in)
    return starts_scored - burn, reads, burn


@torch.inference_mode()
def score_ids(
    model: CharRNN,
    ids: np.ndarray,
    streams: int = 64,
    window: int = 256,
    burn_in: int = 128,
    min_stream: int = 1024,
    device: torch.device | str | None = None,
    precision: str = "fp32",
) -> EvalResult:
    """Score every position of `ids` after the first (a 1-D id array) with carried state.

    precision: 'fp32', 'bf16' (autocast) or 'auto' (the faster of the two, timed here)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    precision = eval_precision(precision, model.config, device).value
    n_targets = len(ids) - 1
    if n_targets < 1:
        return EvalResult(0, float("nan"), float("nan"), float("nan"), float("nan"))
    if burn_in * 4 > min_stream:
        burn_in = min_stream // 4
    streams = max(1, min(streams, n_targets // min_stream))
    read_from, read_len, score_from = _layout(n_targets, streams, burn_in)
    S = len(read_from)
    # the logits of one window are S x W x V floats: keep them (and their softmax) near 64 MB
    window = max(16, min(window, (1 << 24) // (S * model.config.vocab_size)))
    was_training = model.training
    model.eval()
    hidden = model.init_hidden(S, device)
    nats = torch.zeros((), dtype=torch.float64, device=device)
    right = torch.zeros((), dtype=torch.int64, device=device)
    longest = int(read_len.max())
    for offset in range(0, longest, window):
        width = min(window, longest - offset)
        steps = offset + np.arange(width + 1)  # (W+1,)
        positions = np.minimum(read_from[:, None] + steps[None, :], len(ids) - 1)  # (S, W+1)
        chunk = torch.from_numpy(np.asarray(ids[positions], dtype=np.int64)).to(device)
        inside = steps[None, :-1] < read_len[:, None]
        scored = torch.from_numpy(inside & (steps[None, :-1] >= score_from[:, None])).to(device)
        with autocast(precision, device):
            logits, hidden = model(chunk[:, :-1], hidden)  # (S, W, V)
        targets = chunk[:, 1:]
        losses = F.cross_entropy(
            logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), reduction="none"
        ).view_as(targets)  # (S, W)
        nats += (losses * scored).sum(dtype=torch.float64)
        right += ((logits.argmax(-1) == targets) & scored).sum()
    model.train(was_training)
    mean = nats.item() / n_targets
    perplexity = math.inf if mean > 709.0 else math.exp(mean)  # exp overflows a float past 709.78
    return EvalResult(
        chars=n_targets,
        nats_per_char=mean,
        bits_per_char=mean / LN2,
        perplexity=perplexity,
        accuracy=right.item() / n_targets,
    )

"""What the report shows of a network: one forward pass over a passage (bits, top guesses and
top-layer activations per character), simple properties of the text, and the hidden units whose
activation tracks them."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..evaluate import LN2
from ..model import CharRNN
from ..vocab import Vocab, code_points

TOP_K = 5
UNITS_PER_PROPERTY = 3


@dataclass
class Analysis:
    """One forward pass over a passage of N characters; H = hidden units of the top layer."""

    text: str
    known: np.ndarray  # (N,) bool: in the vocabulary
    bits: np.ndarray  # (N,) bits the model paid for each character; NaN where unscored
    top: list[list[tuple[str, float]]]  # per character: the top-k predictions for it, or []
    activations: np.ndarray  # (N, H) top-layer h_t after each character; NaN rows where unknown

    @property
    def scored(self) -> np.ndarray:
        return np.isfinite(self.bits)


def analyse(module: CharRNN, vocab: Vocab, text: str, top_k: int = TOP_K) -> Analysis:
    """Bits, top-k predictions and top-layer activations for every character of `text`."""
    ids = vocab.ids_of_points(code_points(text))  # (N,), -1 outside the vocabulary
    known = ids >= 0
    where = np.flatnonzero(known)  # (K,) positions the model reads
    N, H = len(ids), module.config.hidden
    bits = np.full(N, np.nan)
    activations = np.full((N, H), np.nan, dtype=np.float32)
    top: list[list[tuple[str, float]]] = [[] for _ in range(N)]
    if len(where) == 0:
        return Analysis(text, known, bits, top, activations)
    device = module.head.weight.device
    idx = torch.from_numpy(ids[where]).to(device)[None]  # (1, K)
    captured = []
    hook = module.rnn.register_forward_hook(lambda _m, _inputs, output: captured.append(output[0]))
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode():
            logits, _ = module(idx)  # (1, K, V)
            logp = F.log_softmax(logits[0, :-1].float(), dim=-1)  # (K-1, V): predicts idx[1:]
            paid = -logp.gather(1, idx[0, 1:, None]).squeeze(1) / LN2  # (K-1,)
            probs, best = logp.exp().topk(min(top_k, logp.size(-1)), dim=-1)  # (K-1, k)
            hidden = captured[0][0].float()  # (K, H)
    finally:
        hook.remove()
        module.train(was_training)
    bits[where[1:]] = paid.cpu().double().numpy()
    activations[where] = hidden.cpu().numpy()
    symbols = vocab.symbols
    for position, ps, cs in zip(where[1:].tolist(), probs.tolist(), best.tolist()):
        top[position] = [(symbols[c], p) for c, p in zip(cs, ps)]
    return Analysis(text, known, bits, top, activations)


# ---- simple properties of the text, and the units that track them ---------------------------

PROPERTIES = {
    "inside quotes": "between an opening and a closing double quote",
    "position in line": "characters since the last newline",
    "after a newline": "the character just read is a newline",
    "start of word": "the character just read begins a word",
    "inside parentheses": "between ( and )",
}


def text_properties(text: str) -> dict[str, np.ndarray]:
    """Per character (N,): each of PROPERTIES as known after reading it (no look-ahead)."""
    N = len(text)
    values = {name: np.zeros(N) for name in PROPERTIES}
    quoted, depth, column, previous = False, 0, 0, ""
    for t, c in enumerate(text):
        if c == '"':
            quoted = not quoted
        elif c in "“”":
            quoted = c == "“"
        if c == "(":
            depth += 1
        elif c == ")":
            depth = max(0, depth - 1)
        values["inside quotes"][t] = quoted
        values["position in line"][t] = column
        values["after a newline"][t] = c == "\n"
        values["start of word"][t] = c.isalnum() and not previous.isalnum()
        values["inside parentheses"][t] = depth > 0
        column = 0 if c == "\n" else column + 1
        previous = c
    return values


def unit_correlations(
    properties: dict[str, np.ndarray],
    activations: np.ndarray,
    per_property: int = UNITS_PER_PROPERTY,
) -> dict[str, list[tuple[int, float]]]:
    """Per property: the `per_property` units with the largest |Pearson r| over the characters
    with activations, as (unit, r). A property constant over the passage gets []."""
    rows = np.isfinite(activations).all(axis=1)  # (N,)
    A = activations[rows].astype(np.float64)  # (n, H)
    A = A - A.mean(axis=0)
    a_norm = np.sqrt((A * A).sum(axis=0))  # (H,)
    found = {}
    for name, values in properties.items():
        if rows.sum() < 3:
            found[name] = []
            continue
        p = values[rows] - values[rows].mean()  # (n,)
        p_norm = math.sqrt(float(p @ p))
        if p_norm == 0:
            found[name] = []
            continue
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.where(a_norm > 0, (A.T @ p) / (a_norm * p_norm), 0.0)  # (H,)
        order = np.argsort(-np.abs(r), kind="stable")[:per_property]
        found[name] = [(int(u), float(r[u])) for u in order]
    return found

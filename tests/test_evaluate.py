import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nextchar.config import ModelConfig
from nextchar.evaluate import score_ids
from nextchar.model import CharRNN


@pytest.fixture
def model():
    torch.manual_seed(0)
    return CharRNN(ModelConfig(vocab_size=7, cell="gru", embed=4, hidden=16, layers=2)).eval()


def _one_long_pass(model, ids):
    x = torch.from_numpy(ids.astype(np.int64))
    with torch.no_grad():
        logits, _ = model(x[None, :-1])
    losses = F.cross_entropy(logits[0], x[1:], reduction="none")
    accuracy = (logits[0].argmax(-1) == x[1:]).float().mean().item()
    return losses.mean().item(), accuracy


@pytest.mark.parametrize("window", [1, 7, 64, 5000])
def test_single_stream_equals_one_long_pass(model, window):
    ids = np.random.default_rng(0).integers(0, 7, 3001)
    result = score_ids(model, ids, streams=1, window=window)
    nats, accuracy = _one_long_pass(model, ids)
    assert result.chars == 3000
    assert result.nats_per_char == pytest.approx(nats, rel=1e-6)
    assert result.bits_per_char == pytest.approx(nats / math.log(2), rel=1e-6)
    assert result.perplexity == pytest.approx(math.exp(nats), rel=1e-6)
    assert result.accuracy == pytest.approx(accuracy)


# ---- burn-in: a trained model with long memory --------------------------------------------

KEYS = "ABCD"
RECALL_SYMBOLS = sorted(set(KEYS + ".?\n"))


def recall_text(records: int, seed: int) -> np.ndarray:
    """Records "K.....?K\n": a random key, 2-40 dots, a question mark, the key again. The second
    K can only be told from the first, up to 42 characters back."""
    rng = np.random.default_rng(seed)
    text = "".join(
        f"{k}{'.' * int(n)}?{k}\n"
        for k, n in zip(rng.choice(list(KEYS), records), rng.integers(2, 41, records))
    )
    return np.array([RECALL_SYMBOLS.index(c) for c in text])


@pytest.fixture(scope="module")
def recall_model():
    """A GRU trained (a few seconds) until it answers the recall: windows from random offsets,
    the loss at each answer weighted up, so it learns that in 250 steps rather than thousands."""
    torch.manual_seed(0)
    V = len(RECALL_SYMBOLS)
    model = CharRNN(ModelConfig(vocab_size=V, cell="gru", embed=8, hidden=32, layers=1))
    ids = torch.from_numpy(recall_text(3000, seed=0))
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    rng = np.random.default_rng(1)
    B, T = 16, 48
    for _ in range(250):
        starts = torch.from_numpy(rng.integers(0, len(ids) - T - 1, B))
        chunk = ids[starts[:, None] + torch.arange(T + 1)]  # (B, T+1)
        logits, _ = model(chunk[:, :-1])
        losses = F.cross_entropy(logits.reshape(-1, V), chunk[:, 1:].reshape(-1), reduction="none")
        answer = (chunk[:, :-1] == RECALL_SYMBOLS.index("?")).reshape(-1)
        loss = (losses * (1 + 5 * answer)).mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    return model.eval()


def test_many_streams_with_burn_in_match_one_pass(recall_model):
    """Each stream but the first starts cold. Its burn-in (128 characters, more than a record)
    gives it the key of the record it starts in, so the score is that of one long pass; without
    burn-in each stream's first answer is a guess among the keys, worth ln 4 nats, and the score
    moves by about 45 times the tolerance (a burn-in of 16, shorter than the memory, 17 times)."""
    ids = recall_text(1000, seed=2)[:20001]
    x = torch.from_numpy(ids)
    with torch.no_grad():
        logits, _ = recall_model(x[None, :-1])
    losses = F.cross_entropy(logits[0], x[1:], reduction="none")
    answers = x[:-1] == RECALL_SYMBOLS.index("?")
    assert losses[answers].mean() < 0.1  # it remembers (a guess would cost ln 4 = 1.39)
    nats = losses.mean().item()

    many = score_ids(recall_model, ids, streams=16, window=100, burn_in=128, min_stream=1024)
    assert many.chars == 20000
    assert many.nats_per_char == pytest.approx(nats, rel=1e-4)
    cold = score_ids(recall_model, ids, streams=16, window=100, burn_in=0, min_stream=1024)
    assert cold.nats_per_char > nats * (1 + 20e-4)  # what the burn-in buys, 20x the tolerance


def test_stream_layout_scores_each_target_once():
    from nextchar.evaluate import _layout

    for n, s, burn in [(10000, 8, 128), (999, 3, 10), (5000, 1, 50)]:
        read_from, read_len, score_from = _layout(n, s, burn)
        covered = np.zeros(n, dtype=int)
        for a, length, skip in zip(read_from, read_len, score_from):
            covered[a + skip : a + length] += 1
        assert np.all(covered == 1)

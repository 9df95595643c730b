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


def test_many_streams_with_burn_in_match_one_pass(model):
    ids = np.random.default_rng(1).integers(0, 7, 20001)
    many = score_ids(model, ids, streams=16, window=100, burn_in=128, min_stream=1024)
    nats, _ = _one_long_pass(model, ids)
    assert many.chars == 20000
    assert many.nats_per_char == pytest.approx(nats, rel=1e-4)


def test_stream_layout_scores_each_target_once():
    from nextchar.evaluate import _layout

    for n, s, burn in [(10000, 8, 128), (999, 3, 10), (5000, 1, 50)]:
        read_from, read_len, score_from = _layout(n, s, burn)
        covered = np.zeros(n, dtype=int)
        for a, length, skip in zip(read_from, read_len, score_from):
            covered[a + skip:a + length] += 1
        assert np.all(covered == 1)

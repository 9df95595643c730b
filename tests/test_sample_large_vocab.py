"""Sampling with a vocabulary too large for layer 0's lookup table (stepping.py: StepModel's
`embed_proj`): each drawn character's embedding row is projected at every step instead. Checked
against the module, as test_sample.py checks the table path."""

import pytest
import torch

import nextchar.stepping as stepping
from nextchar.config import ModelConfig, SampleConfig
from nextchar.errors import UserError
from nextchar.model import CharRNN
from nextchar.sample import Sampler, sample_precision
from nextchar.stepping import StepModel
from nextchar.vocab import Vocab


def step_through(
    model: CharRNN, precision: str, idx: torch.Tensor
) -> tuple[StepModel, torch.Tensor]:
    """Logits (B, T, V) of stepping `idx` (B, T) one character at a time from a zero state."""
    stepper = StepModel(model, precision)
    state = stepper.from_module_hidden(model.init_hidden(idx.size(0)))
    with torch.no_grad():
        steps = [stepper.step(idx[:, t], state)[0] for t in range(idx.size(1))]
    return stepper, torch.stack(steps, 1)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn", "rnn-relu"])
def test_projected_embedding_steps_equal_the_module(cell, monkeypatch):
    monkeypatch.setattr(stepping, "TABLE_LIMIT_BYTES", 0)  # every vocabulary is "too large"
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=40, cell=cell, embed=16, hidden=32, layers=2)).eval()
    idx = torch.randint(0, 40, (3, 20))
    with torch.no_grad():
        logits, _ = model(idx)
    for precision, tolerance in (("fp32", 1e-5), ("bf16", 0.02), ("int8", 0.02)):
        stepper, stepped = step_through(model, precision, idx)
        assert stepper.table is None and stepper.embed_proj is not None
        assert (stepped - logits).abs().max().item() < tolerance, precision


def test_a_large_vocabulary_samples_through_the_projection():
    """20,000 symbols and a 256-wide LSTM: the table would take 80 MB, so the projection is used
    without being forced; greedy text equals argmax decoding by the module."""
    vocab = Vocab([chr(0x4E00 + i) for i in range(20_000)])
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=len(vocab), cell="lstm", embed=16, hidden=256, layers=1))
    model.eval()
    sampler = Sampler(model, vocab, "fp32")
    prime = vocab.decode([5, 17, 4000])
    text = sampler.generate(SampleConfig(length=20, greedy=True, prime=prime))[0]
    assert sampler.stepper(1).table is None and sampler.stepper(1).embed_proj is not None
    ids = vocab.encode(prime)
    with torch.no_grad():  # recompute the whole prefix every step: slow but obviously right
        for _ in range(20):
            logits, _ = model(torch.tensor([ids]))
            ids.append(int(logits[0, -1].argmax()))
    assert text == vocab.decode(ids)
    drawn = sampler.generate(SampleConfig(length=50, seed=1, num_samples=2, prime=prime))
    assert all(len(t) == 53 and set(t) <= set(vocab.symbols) for t in drawn)


def test_int8_needs_an_embedding_size_that_is_a_multiple_of_16_when_projected(monkeypatch):
    monkeypatch.setattr(stepping, "TABLE_LIMIT_BYTES", 0)
    model = CharRNN(ModelConfig(vocab_size=40, cell="lstm", embed=12, hidden=32, layers=1))
    with pytest.raises(UserError, match="multiple of 16"):
        sample_precision("int8", model, 1)

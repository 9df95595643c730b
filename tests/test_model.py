import pytest
import torch
from torch import nn

from nextchar.config import ModelConfig
from nextchar.model import CharRNN, flops_per_char
from nextchar.sample import StepModel


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn", "rnn-relu"])
@pytest.mark.parametrize("embed", [0, 8])
def test_forward_equals_naive_loop_and_plain_torch(cell, embed):
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=11, cell=cell, embed=embed, hidden=12, layers=2)).eval()
    idx = torch.randint(0, 11, (3, 9))
    logits, hidden = model(idx)
    assert logits.shape == (3, 9, 11)
    # naive: one character at a time, state carried
    state = None
    steps = []
    for t in range(9):
        out, state = model(idx[:, t:t + 1], state)
        steps.append(out)
    assert torch.allclose(torch.cat(steps, 1), logits, atol=1e-5)
    # the fused single-step path used for sampling
    stepper = StepModel(model, "fp32")
    states = stepper.from_module_hidden(model.init_hidden(3))
    fused = []
    for t in range(9):
        out, states = stepper.step(idx[:, t], states)
        fused.append(out)
    assert torch.allclose(torch.stack(fused, 1), logits, atol=1e-5)
    # plain torch.nn with the same weights
    x = model.embed(idx) if embed else nn.functional.one_hot(idx, 11).float()
    out, _ = model.rnn(x)
    assert torch.allclose(nn.functional.linear(out, model.head.weight, model.head.bias), logits, atol=1e-6)


def test_lstm_cell_closed_form():
    torch.manual_seed(1)
    model = CharRNN(ModelConfig(vocab_size=5, cell="lstm", embed=0, hidden=3, layers=1)).eval()
    idx = torch.tensor([[0, 3, 1]])
    logits, _ = model(idx)
    W_ih, W_hh = model.rnn.weight_ih_l0, model.rnn.weight_hh_l0
    b = model.rnn.bias_ih_l0 + model.rnn.bias_hh_l0
    h = torch.zeros(3)
    c = torch.zeros(3)
    for t, i in enumerate(idx[0]):
        gates = W_ih[:, i] + W_hh @ h + b
        ig, fg, gg, og = gates.chunk(4)
        c = torch.sigmoid(fg) * c + torch.sigmoid(ig) * torch.tanh(gg)
        h = torch.sigmoid(og) * torch.tanh(c)
        assert torch.allclose(model.head(h), logits[0, t], atol=1e-6)


def test_flops_formula():
    config = ModelConfig(vocab_size=65, cell="lstm", hidden=512, layers=2, embed=64)
    expected = 2 * (4 * 512 * (64 + 512) + 4 * 512 * 1024 + 512 * 65) * 3
    assert flops_per_char(config) == expected


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn", "rnn-relu"])
@pytest.mark.parametrize("embed", [0, 4])
def test_parameter_shapes_match_the_module(cell, embed):
    from nextchar.model import parameter_shapes

    config = ModelConfig(vocab_size=7, cell=cell, embed=embed, hidden=5, layers=3)
    actual = {k: tuple(v.shape) for k, v in CharRNN(config).state_dict().items()}
    assert actual == parameter_shapes(config)

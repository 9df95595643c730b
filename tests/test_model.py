import pytest
import torch
from torch import nn

import nextchar.model as model_module
from nextchar.config import ModelConfig
from nextchar.model import CharRNN, dropout, flops_per_char
from nextchar.stepping import StepModel


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
        out, state = model(idx[:, t : t + 1], state)
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
    assert torch.allclose(
        nn.functional.linear(out, model.head.weight, model.head.bias), logits, atol=1e-6
    )


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


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn", "rnn-relu"])
def test_training_layer_by_layer_is_the_fused_rnn_without_the_masks(cell, monkeypatch):
    """With dropout, CPU training runs one fused call per layer; with the masks taken out it
    must be exactly the stacked nn.LSTM/GRU/RNN, outputs, final state and gradients."""
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=9, cell=cell, embed=5, hidden=7, layers=3, dropout=0.3))
    idx = torch.randint(0, 9, (2, 6))
    state = model.init_hidden(2)
    state = (
        tuple(torch.randn_like(t) for t in state)
        if isinstance(state, tuple)
        else torch.randn_like(state)
    )
    monkeypatch.setattr(model_module, "dropout", lambda x, p, training: x)
    model.train()
    logits, hidden = model(idx, state)
    logits.square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.eval()  # the fused multi-layer call; its dropout is off in eval mode
    ref_logits, ref_hidden = model(idx, state)
    ref_logits.square().sum().backward()
    assert torch.allclose(logits, ref_logits, atol=1e-6)
    for a, b in zip(
        hidden if isinstance(hidden, tuple) else [hidden],
        ref_hidden if isinstance(ref_hidden, tuple) else [ref_hidden],
    ):
        assert torch.allclose(a, b, atol=1e-6)
    for g, p in zip(grads, model.parameters()):
        assert torch.allclose(g, p.grad, atol=1e-5)


def test_dropout_keeps_the_expected_fraction_and_scale():
    torch.manual_seed(0)
    x = torch.ones(400_000, requires_grad=True)
    y = dropout(x, 0.3, True)
    dropped = (y == 0).double().mean().item()
    assert abs(dropped - 0.3) < 0.005
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.7))
    assert abs(y.mean().item() - 1.0) < 0.01
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # the gradient flows through the kept entries, scaled
    assert dropout(x, 0.3, False) is x and dropout(x, 0.0, True) is x

"""CharRNN: ids -> embedding (or one-hot) -> stacked nn.RNN/LSTM/GRU -> linear head -> logits.

B = batch (streams), T = time steps, V = vocabulary size, E = embedding size, H = hidden size,
L = layers. Built on torch.nn's fused recurrent modules (oneDNN on CPU, cuDNN on GPU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig

# Hidden state: (h, c) for LSTM, h otherwise; each (L, B, H).
Hidden = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
GATES = {"lstm": 4, "gru": 3, "rnn": 1, "rnn-relu": 1}  # gate blocks per layer, each hidden wide


def detach_hidden(hidden: Hidden) -> Hidden:
    """Cut the graph between truncated-BPTT windows, keeping the values."""
    if isinstance(hidden, tuple):
        return tuple(h.detach() for h in hidden)
    return hidden.detach()


class CharRNN(nn.Module):
    """ids (B, T) -> logits (B, T, V) and the hidden state to carry into the next window.

    An embedding (or one-hot rows when config.embed is 0), a stacked nn.LSTM / nn.GRU / nn.RNN
    (fused kernels), dropout on each layer's output while training, and a linear head. The
    sampler (sample.py) steps the same weights one character at a time."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.vocab_size < 2:
            raise ValueError("CharRNN needs vocab_size >= 2")
        self.config = config
        V, E, H = config.vocab_size, config.embed, config.hidden
        self.embed = nn.Embedding(V, E) if E > 0 else None
        input_size = E if E > 0 else V
        between = config.dropout if config.layers > 1 else 0.0  # between layers (eval and GPU paths)
        if config.cell == "lstm":
            self.rnn = nn.LSTM(input_size, H, config.layers, batch_first=True, dropout=between)
        elif config.cell == "gru":
            self.rnn = nn.GRU(input_size, H, config.layers, batch_first=True, dropout=between)
        else:
            nonlinearity = "relu" if config.cell == "rnn-relu" else "tanh"
            self.rnn = nn.RNN(input_size, H, config.layers, batch_first=True, dropout=between,
                              nonlinearity=nonlinearity)
        self.head = nn.Linear(H, V)  # forward() applies dropout to the top layer's output first

    @property
    def is_lstm(self) -> bool:
        return isinstance(self.rnn, nn.LSTM)

    def init_hidden(self, batch_size: int, device: torch.device | str | None = None) -> Hidden:
        """Zero state for `batch_size` streams."""
        shape = (self.config.layers, batch_size, self.config.hidden)
        device = device if device is not None else self.head.weight.device
        zeros = torch.zeros(shape, device=device)
        return (zeros, zeros.clone()) if self.is_lstm else zeros

    def inputs(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, T) ids -> (B, T, E) embeddings, or (B, T, V) one-hot rows."""
        if self.embed is not None:
            return self.embed(idx)
        return F.one_hot(idx, self.config.vocab_size).to(self.head.weight.dtype)

    def forward(self, idx: torch.Tensor, hidden: Hidden | None = None) -> tuple[torch.Tensor, Hidden]:
        """idx (B, T) ids, hidden from the previous window (zeros if None) -> logits (B, T, V), hidden."""
        x = self.inputs(idx)  # (B, T, E|V)
        if hidden is not None and not _autocasting(x.device.type):
            # bf16 state carried into an fp32 window (a run resumed in another precision): exact
            hidden = _cast(hidden, x.dtype)
        if x.is_cuda and torch.is_autocast_enabled():
            # CUDA autocast runs cuDNN's RNN in fp16 whatever its dtype, and fp16 gradients need
            # loss scaling: the recurrence stays fp32 (TF32 on tensor cores), the head autocasts.
            with torch.autocast("cuda", enabled=False):
                out, hidden = self.rnn(x.float(), hidden)  # (B, T, H)
        elif self.training and self.config.dropout > 0 and self.config.layers > 1 and not x.is_cuda:
            out, hidden = self._layer_by_layer(x, hidden)  # (B, T, H)
        else:
            out, hidden = self.rnn(x, hidden)  # (B, T, H)
        out = dropout(out, self.config.dropout, self.training)
        return self.head(out), hidden  # (B, T, V)

    def _layer_by_layer(self, x: torch.Tensor, hidden: Hidden | None) -> tuple[torch.Tensor, Hidden]:
        """self.rnn's math, one layer per fused call with `dropout` between the layers. On CPU the
        RNN's own inter-layer dropout draws its mask with bernoulli_, which costs 5% of a
        2x768 training step on its own (BENCHMARKS.md)."""
        L, cell = self.config.layers, self.config.cell
        if hidden is None:
            hidden = self.init_hidden(x.size(0), x.device)
        run = {"lstm": torch.lstm, "gru": torch.gru, "rnn": torch.rnn_tanh, "rnn-relu": torch.rnn_relu}[cell]
        hs, cs = [], []
        for k, weights in enumerate(self.rnn.all_weights):  # [w_ih, w_hh, b_ih, b_hh] of layer k
            # (input, state, weights, has_biases, layers, dropout, train, bidirectional, batch_first)
            if cell == "lstm":
                x, h, c = run(x, (hidden[0][k:k + 1], hidden[1][k:k + 1]), weights, True, 1, 0.0, True, False, True)
                cs.append(c)
            else:
                x, h = run(x, hidden[k:k + 1], weights, True, 1, 0.0, True, False, True)
            hs.append(h)
            if k < L - 1:
                x = dropout(x, self.config.dropout, True)
        return x, ((torch.cat(hs), torch.cat(cs)) if cell == "lstm" else torch.cat(hs))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _autocasting(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch before 2.4 takes no device type
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


def _cast(hidden: Hidden, dtype: torch.dtype) -> Hidden:
    if isinstance(hidden, tuple):
        return tuple(h.to(dtype) for h in hidden)
    return hidden.to(dtype)


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout. On CPU the mask comes from torch.rand, about 3x faster than the
    bernoulli_ draw inside F.dropout (5 vs 14-18 ms for a 32x64x768 activation)."""
    if not training or p == 0:
        return x
    if x.is_cuda:
        return F.dropout(x, p, True)
    keep = torch.rand(x.shape, device=x.device) >= p
    return x * keep.to(x.dtype).mul_(1.0 / (1.0 - p))


def parameter_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The state_dict shapes a CharRNN built from `config` has, computed without building it."""
    gates = GATES[config.cell]
    V, E, H = config.vocab_size, config.embed, config.hidden
    shapes: dict[str, tuple[int, ...]] = {}
    if E > 0:
        shapes["embed.weight"] = (V, E)
    for k in range(config.layers):
        input_size = (E if E > 0 else V) if k == 0 else H
        shapes[f"rnn.weight_ih_l{k}"] = (gates * H, input_size)
        shapes[f"rnn.weight_hh_l{k}"] = (gates * H, H)
        shapes[f"rnn.bias_ih_l{k}"] = (gates * H,)
        shapes[f"rnn.bias_hh_l{k}"] = (gates * H,)
    shapes["head.weight"] = (V, H)
    shapes["head.bias"] = (V,)
    return shapes


def flops_per_char(config: ModelConfig, training: bool = True) -> float:
    """Matrix-multiply FLOPs per character (2 per multiply-add); x3 for forward+backward."""
    gates = GATES[config.cell]
    H, V = config.hidden, config.vocab_size
    input_size = config.embed if config.embed > 0 else V
    macs = gates * H * (input_size + H) + (config.layers - 1) * gates * H * (2 * H) + H * V
    return 2.0 * macs * (3.0 if training else 1.0)

"""CharRNN: ids -> embedding (or one-hot) -> stacked nn.RNN/LSTM/GRU -> linear head -> logits.

B = batch (streams), T = time steps, V = vocabulary size, E = embedding size, H = hidden size,
L = layers. Built on torch.nn's fused recurrent modules (oneDNN on CPU, cuDNN on GPU).

Regularisation, while training only (AWD-LSTM, Merity et al. 2017, arXiv:1708.02182), each one
mask per window so that the fused kernels still run: `dropout` on each layer's output (its mask
shared over time with `locked_dropout`), `weight_drop` (DropConnect on the hidden-to-hidden
matrices: the kernel runs with W_hh * mask) and `embed_drop` (whole rows of the embedding table,
that is whole characters, dropped). Masks are scaled by 1/(1-p), so evaluation, sampling and
checkpoints use the raw weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings

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
    (fused kernels), the regularisers above while training, and a linear head. The sampler
    (sample.py) steps the same weights one character at a time."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.vocab_size < 2:
            raise ValueError("CharRNN needs vocab_size >= 2")
        self.config = config
        V, E, H = config.vocab_size, config.embed, config.hidden
        self.embed = nn.Embedding(V, E) if E > 0 else None
        input_size = E if E > 0 else V
        between = (
            config.dropout if config.layers > 1 else 0.0
        )  # between layers (eval and GPU paths)
        if config.cell == "lstm":
            self.rnn = nn.LSTM(input_size, H, config.layers, batch_first=True, dropout=between)
        elif config.cell == "gru":
            self.rnn = nn.GRU(input_size, H, config.layers, batch_first=True, dropout=between)
        else:
            nonlinearity = "relu" if config.cell == "rnn-relu" else "tanh"
            self.rnn = nn.RNN(
                input_size,
                H,
                config.layers,
                batch_first=True,
                dropout=between,
                nonlinearity=nonlinearity,
            )
        self.head = nn.Linear(H, V)  # forward() applies dropout to the top layer's output first

    @property
    def is_lstm(self) -> bool:
        return isinstance(self.rnn, nn.LSTM)

    def set_dropout(self, p: float) -> None:
        """--dropout p from now on, as if the model had been built with it (overfit.py)."""
        self.config = dataclasses.replace(self.config, dropout=p)
        self.rnn.dropout = p if self.config.layers > 1 else 0.0  # the fused GPU path's

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

    def forward(
        self, idx: torch.Tensor, hidden: Hidden | None = None
    ) -> tuple[torch.Tensor, Hidden]:
        """idx (B, T) ids, hidden from the previous window (zeros if None) -> logits (B, T, V), hidden."""
        x = self.inputs(idx)  # (B, T, E|V)
        if self.training and self.config.embed_drop > 0:  # whole characters: rows of the table
            rows = keep_mask((self.config.vocab_size, 1), self.config.embed_drop, x.device, x.dtype)
            x = x * rows[idx]  # (B, T, 1) broadcast over E
        if hidden is not None and not _autocasting(x.device.type):
            # bf16 state carried into an fp32 window (a run resumed in another precision): exact
            hidden = _cast(hidden, x.dtype)
        if x.is_cuda and torch.is_autocast_enabled():
            # CUDA autocast runs cuDNN's RNN in fp16 whatever its dtype, and fp16 gradients need
            # loss scaling: the recurrence stays fp32 (TF32 on tensor cores), the head autocasts.
            with torch.autocast("cuda", enabled=False):
                out, hidden = self._recurrence(x.float(), hidden)  # (B, T, H)
        else:
            out, hidden = self._recurrence(x, hidden)  # (B, T, H)
        out = self._dropout(out)
        return self.head(out), hidden  # (B, T, V)

    def _dropout(self, x: torch.Tensor) -> torch.Tensor:
        """--dropout on a layer's output (B, T, H): a fresh mask per element, or with
        locked_dropout one per stream, the same at every time step."""
        if self.config.locked_dropout:
            return locked_dropout(x, self.config.dropout, self.training)
        return dropout(x, self.config.dropout, self.training)

    def _recurrence(self, x: torch.Tensor, hidden: Hidden | None) -> tuple[torch.Tensor, Hidden]:
        """x (B, T, E|V) -> (B, T, H) through the stacked cell: self.rnn itself; or, while training
        with weight drop or with dropout between layers that nn.RNN cannot draw our way (on the
        CPU its bernoulli_ mask is slow; it has no locked mask), the same fused kernel called
        with explicit, masked weights."""
        config = self.config
        between = config.dropout if config.layers > 1 else 0.0
        own_between = between > 0 and (not x.is_cuda or config.locked_dropout)
        if not self.training or not (config.weight_drop > 0 or own_between):
            return self.rnn(x, hidden)
        if hidden is None:
            hidden = self.init_hidden(x.size(0), x.device)
        weights = [
            list(layer) for layer in self.rnn.all_weights
        ]  # [w_ih, w_hh, b_ih, b_hh] per layer
        if config.weight_drop > 0:  # DropConnect: one mask per window, on W_hh only
            for layer in weights:
                layer[1] = layer[1] * keep_mask(
                    layer[1].shape, config.weight_drop, x.device, layer[1].dtype
                )
        if own_between:
            return self._layer_by_layer(x, hidden, weights)
        # the whole stack in one fused call (on the GPU with cuDNN's own dropout between layers)
        flat = [w for layer in weights for w in layer]
        return _run(config.cell, x, hidden, flat, config.layers, between)

    def _layer_by_layer(
        self, x: torch.Tensor, hidden: Hidden, weights: list[list[torch.Tensor]]
    ) -> tuple[torch.Tensor, Hidden]:
        """self.rnn's math, one fused call per layer with our dropout between the layers. On CPU
        the RNN's own inter-layer dropout draws its mask with bernoulli_, which costs 5% of a
        2x768 training step on its own (BENCHMARKS.md)."""
        L, lstm = self.config.layers, self.is_lstm
        hs, cs = [], []
        for k in range(L):
            state = (hidden[0][k : k + 1], hidden[1][k : k + 1]) if lstm else hidden[k : k + 1]
            x, state = _run(self.config.cell, x, state, weights[k], 1, 0.0)
            if lstm:
                hs.append(state[0])
                cs.append(state[1])
            else:
                hs.append(state)
            if k < L - 1:
                x = self._dropout(x)
        return x, ((torch.cat(hs), torch.cat(cs)) if lstm else torch.cat(hs))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


_KERNELS = {"lstm": torch.lstm, "gru": torch.gru, "rnn": torch.rnn_tanh, "rnn-relu": torch.rnn_relu}


def _run(
    cell: str,
    x: torch.Tensor,
    hidden: Hidden,
    weights: list[torch.Tensor],
    layers: int,
    between: float,
) -> tuple[torch.Tensor, Hidden]:
    """The fused kernel nn.LSTM/GRU/RNN calls in training mode, with explicit weights (4 per
    layer). cuDNN copies weights that are not its flat buffer (masked ones) into one each call,
    and warns that it does; that copy is the price of weight drop there, not news."""
    with warnings.catch_warnings() if x.is_cuda else contextlib.nullcontext():
        if x.is_cuda:
            warnings.filterwarnings("ignore", message="RNN module weights are not part")
        # (input, state, weights, has_biases, layers, dropout, train, bidirectional, batch_first)
        if cell == "lstm":
            out, h, c = torch.lstm(x, hidden, weights, True, layers, between, True, False, True)
            return out, (h, c)
        return _KERNELS[cell](x, hidden, weights, True, layers, between, True, False, True)


def _autocasting(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch before 2.4 takes no device type
        return (
            torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()
        )


def _cast(hidden: Hidden, dtype: torch.dtype) -> Hidden:
    if isinstance(hidden, tuple):
        return tuple(h.to(dtype) for h in hidden)
    return hidden.to(dtype)


def keep_mask(
    shape: tuple[int, ...], p: float, device: torch.device | str, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Inverted-dropout mask of `shape`: 0 with probability p, else 1/(1-p). Drawn with
    torch.rand, which costs less on CPU than a bernoulli_ draw (BENCHMARKS.md, "Dropout masks";
    bench/dropout_masks.py)."""
    keep = torch.rand(shape, device=device) >= p
    return keep.to(dtype).mul_(1.0 / (1.0 - p))


@contextlib.contextmanager
def evaluating(module: nn.Module):
    """Eval mode (no dropout) for the block, then the mode the caller had: whoever changes a
    model's mode restores it."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout, a mask value per element (F.dropout's own on the GPU)."""
    if not training or p == 0:
        return x
    if x.is_cuda:
        return F.dropout(x, p, True)
    return x * keep_mask(x.shape, p, x.device, x.dtype)


def locked_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Variational dropout of x (B, T, H): one mask per stream and unit, the same at every time
    step (Gal and Ghahramani 2016), so a unit that is dropped stays dropped for the window."""
    if not training or p == 0:
        return x
    return x * keep_mask((x.size(0), 1, x.size(2)), p, x.device, x.dtype)  # (B, 1, H) over T


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

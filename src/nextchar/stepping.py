"""The stepping engine for generation: one step of the recurrence per character, the state
carried, never the prefix recomputed (the policy that drives it is in sample.py).

`StepModel` runs a CharRNN one character at a time with as few tensor operations as the math
allows: the first layer's input projection is a lookup table, each LSTM/RNN layer is one
matrix product over [input; hidden], and the hidden states of all layers live side by side in
one buffer that the next layer reads in place. At one or a few streams a step is bound by
reading the weights, so the weights can be held as fp32 (exact), bf16 (the numerics of bf16
training) or int8 with one scale per row (a quarter of the bytes; on CPUs with AVX512-BF16 the
whole 2x512 LSTM then stays in the cores' caches). The tests check every format against plain
nn.LSTM/GRU/RNN.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .model import GATES, CharRNN, Hidden

TABLE_LIMIT_BYTES = 64 << 20  # largest first-layer lookup table (vocab x gates) worth building


def _uses_table(config) -> bool:
    """Whether layer 0's input projection is kept as a (vocab, gates) lookup table."""
    size = config.vocab_size * GATES[config.cell] * config.hidden * 4
    return config.embed == 0 or size <= TABLE_LIMIT_BYTES


def int8_fits(model: CharRNN) -> bool:
    """torch's int8 weight kernel reads 16 values at a time from 32-byte aligned rows: every
    inner dimension it sees (the hidden size, the embedding when it is not tabled) must be a
    multiple of 16, and it runs on the CPU only."""
    config = model.config
    return (
        model.head.weight.device.type == "cpu"
        and hasattr(torch, "_weight_int8pack_mm")
        and config.hidden % 16 == 0
        and (_uses_table(config) or config.embed % 16 == 0)
    )


class Projection:
    """base + x @ W.T with W (N, K) stored as fp32, bf16 or int8 rows with fp32->bf16 scales.

    x (B, K) in the format's activation dtype (fp32 for fp32, else bf16), base (B or 1, N) fp32
    -> (B, N) fp32, into `out` when given."""

    def __init__(self, weight: torch.Tensor, precision: str):
        weight = weight.detach().float()
        self.precision = precision
        if precision == "int8":
            scale = weight.abs().amax(1).clamp_min(1e-30) / 127  # (N,)
            self.weight = (
                torch.round(weight / scale[:, None]).clamp_(-127, 127).to(torch.int8).contiguous()
            )
            self.scale = scale.to(torch.bfloat16)
        else:
            self.weight = weight.to(activation_dtype(precision)).contiguous()
        self.weight_t = self.weight.t()  # (K, N) view, made once

    def __call__(
        self, x: torch.Tensor, base: torch.Tensor, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.precision == "fp32":
            return torch.addmm(base, x, self.weight_t, out=out)
        if self.precision == "int8":
            y = torch._weight_int8pack_mm(
                x if x.is_contiguous() else x.contiguous(), self.weight, self.scale
            )
        elif x.size(0) == 1:
            y = torch.mv(self.weight, x[0])  # (N,): bf16 mv beats a (1, K) matmul
        else:
            y = torch.mm(x, self.weight_t)
        return torch.add(base, y, out=out)


def activation_dtype(precision: str) -> torch.dtype:
    return torch.float32 if precision == "fp32" else torch.bfloat16


@dataclass
class StepState:
    """Hidden state between steps.

    z (B, L*H): every layer's output side by side, in the activation dtype; layer k reads
    z[:, (k-1)H:(k+1)H] = [its input; its own state] in place. c: the LSTM cell state per layer,
    (B, H) fp32. work: per layer, the gate buffer and the views the step writes through, made
    once here so that a step allocates and slices as little as possible."""

    z: torch.Tensor
    c: list[torch.Tensor]
    work: list[tuple]


class StepModel:
    """A CharRNN's weights arranged for single-character steps (see the module docstring)."""

    def __init__(self, model: CharRNN, precision: str = "fp32"):
        if precision not in ("fp32", "bf16", "int8"):
            raise ValueError(f"StepModel precision must be fp32, bf16 or int8, got {precision!r}")
        cfg = model.config
        self.model, self.precision, self.cell = model, precision, cfg.cell
        self.dtype = activation_dtype(precision)
        self.H, self.L, self.G = cfg.hidden, cfg.layers, GATES[cfg.cell]
        G, H, rnn = self.G, cfg.hidden, model.rnn
        order = _lstm_order(H) if cfg.cell == "lstm" else torch.arange(G * H)  # i f g o -> i f o g
        param = lambda name, k: getattr(rnn, f"{name}_l{k}").detach().float()[order]  # noqa: E731
        merged = cfg.cell != "gru"  # GRU applies its reset gate to W_hn h alone: keep them apart
        with torch.no_grad():
            # layer 0's input projection (with biases that are added unconditionally) as a table
            w_ih0 = param("weight_ih", 0)  # (G*H, E|V)
            bias0 = param("bias_ih", 0) + (param("bias_hh", 0) if merged else 0)
            if model.embed is None:
                self.table = (w_ih0.t() + bias0).contiguous()  # a one-hot row picks a column
                self.embed_proj = None
            elif _uses_table(cfg):
                self.table = torch.addmm(bias0, model.embed.weight.detach().float(), w_ih0.t())
                self.embed_proj = None
            else:  # a huge vocabulary: project the embedding row each step instead
                self.table, self.embed_proj = (
                    None,
                    (
                        model.embed.weight.detach().float(),
                        Projection(w_ih0, precision),
                        bias0[None],
                    ),
                )
            # per layer: the product and its bias (1, G*H); merged layer 0 adds the table row instead
            self.recurrent, self.recurrent_bias = [], []
            for k in range(self.L):
                if not merged:  # reads h_k
                    w, b = param("weight_hh", k), param("bias_hh", k)[None]
                elif k == 0:  # reads h_0
                    w, b = param("weight_hh", 0), None
                else:  # reads [h_{k-1}; h_k]
                    w = torch.cat([param("weight_ih", k), param("weight_hh", k)], 1)
                    b = (param("bias_ih", k) + param("bias_hh", k))[None]
                self.recurrent.append(Projection(w, precision))
                self.recurrent_bias.append(b)
            self.inputs = [None] + [
                (Projection(param("weight_ih", k), precision), param("bias_ih", k)[None])
                if not merged
                else None
                for k in range(1, self.L)
            ]
            self.head = Projection(model.head.weight, precision)
            self.head_bias = model.head.bias.detach().float()[None]  # (1, V)

    def from_module_hidden(self, hidden: Hidden) -> StepState:
        """The module's (L, B, H) hidden [and cell] state -> a StepState."""
        h, c = hidden if self.cell == "lstm" else (hidden, None)
        B, L = h.size(1), self.L
        z = torch.empty(B, L * self.H, dtype=self.dtype, device=h.device)  # fresh, so aligned
        z.copy_(h.detach().permute(1, 0, 2).reshape(B, -1))
        cells = [c[k].detach().float().clone() for k in range(L)] if c is not None else []
        return self._state(z, cells)

    def join(self, states: list[StepState]) -> StepState:
        """The rows of several states, in order, as one new state (streams joining a batch)."""
        z = torch.cat([s.z for s in states])  # (B, L*H), fresh
        cells = [torch.cat([s.c[k] for s in states]) for k in range(len(states[0].c))]
        return self._state(z, cells)

    def select(self, state: StepState, rows: torch.Tensor) -> StepState:
        """A new state of `rows` (B',) of `state`, in that order (streams leaving a batch)."""
        return self._state(
            state.z.index_select(0, rows), [c.index_select(0, rows) for c in state.c]
        )

    def _state(self, z: torch.Tensor, cells: list[torch.Tensor]) -> StepState:
        """A StepState over z (B, L*H) and the LSTM cells, with its gate buffers and views."""
        B, H = z.size(0), self.H
        work = []
        for k in range(self.L):
            own = z[:, k * H : (k + 1) * H]  # (B, H)
            reads = own if k == 0 or self.cell == "gru" else z[:, (k - 1) * H : (k + 1) * H]
            gates = torch.empty(B, self.G * H, device=z.device)  # fp32
            views = (
                (
                    gates[:, : 3 * H],
                    gates[:, :H],
                    gates[:, H : 2 * H],
                    gates[:, 2 * H : 3 * H],
                    gates[:, 3 * H :],
                    torch.empty(B, H, device=z.device),
                )
                if self.cell == "lstm"
                else ()
            )
            below = z[:, (k - 1) * H : k * H] if k else None  # (B, H): a GRU layer's input
            work.append((own, reads, below, gates, views))
        return StepState(z, cells, work)

    def step(self, idx: torch.Tensor, state: StepState) -> tuple[torch.Tensor, StepState]:
        """idx (B,) ids -> logits (B, V) fp32 (a new tensor); `state` is advanced in place."""
        if self.table is not None:
            first = self.table[idx]  # (B, G*H): input projection and biases of layer 0
        else:
            embed, proj, bias = self.embed_proj
            first = proj(embed[idx].to(self.dtype), bias)
        for k, (own, reads, below, gates, views) in enumerate(state.work):
            if self.cell == "gru":
                x_part = first if k == 0 else self.inputs[k][0](below, self.inputs[k][1])
                _gru_update(x_part, self.recurrent[k](own, self.recurrent_bias[k]), own, self.H)
                continue
            self.recurrent[k](
                reads, first if k == 0 else self.recurrent_bias[k], out=gates
            )  # (B, G*H)
            if self.cell == "lstm":
                sig, i, f, o, g, tanh_c = views
                sig.sigmoid_()
                g.tanh_()
                c = state.c[k]
                c.mul_(f).addcmul_(i, g)
                torch.mul(o, torch.tanh(c, out=tanh_c), out=own)
            else:
                own.copy_(gates.tanh_() if self.cell == "rnn" else gates.relu_())
        return self.head(state.work[-1][0], self.head_bias), state


def _lstm_order(H: int) -> torch.Tensor:
    """Rows of PyTorch's i f g o gate blocks reordered to i f o g: one sigmoid covers three."""
    i, f, g, o = torch.arange(4 * H).chunk(4)
    return torch.cat([i, f, o, g])


def _gru_update(x_part: torch.Tensor, h_part: torch.Tensor, h: torch.Tensor, H: int) -> None:
    """PyTorch's GRU: r, z = sigmoid(x_rz + h_rz); n = tanh(x_n + r * h_n); h' = n + z * (h - n)."""
    rz = torch.add(x_part[:, : 2 * H], h_part[:, : 2 * H]).sigmoid_()
    n = torch.addcmul(x_part[:, 2 * H :], rz[:, :H], h_part[:, 2 * H :]).tanh_()
    torch.addcmul(n, rz[:, H:], h.float() - n, out=h)

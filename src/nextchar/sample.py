"""Generating text: one step of the recurrence per character, the state carried, never the
prefix recomputed.

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

import dataclasses
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from . import autotune
from .config import SampleConfig
from .errors import UserError
from .model import GATES, CharRNN, Hidden
from .vocab import Vocab

PRECISIONS = ("auto", "fp32", "bf16", "int8")
TIMING_S = 0.1  # seconds of timing per `auto` decision (one per model shape and batch size)
STEPS_PER_CALL = 8  # steps timed together, so one timing is well above the clock's resolution
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
    return (model.head.weight.device.type == "cpu" and hasattr(torch, "_weight_int8pack_mm")
            and config.hidden % 16 == 0 and (_uses_table(config) or config.embed % 16 == 0))


def check_sample_precision(precision: str, model: CharRNN) -> None:
    """Refuse a weight format that cannot run here, before any work."""
    if precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "int8" and not int8_fits(model):
        raise UserError("--precision int8 needs the CPU and a hidden size (and an embedding size, "
                        "for vocabularies over ~10,000 symbols) that is a multiple of 16; use bf16 or fp32")


def sample_step_seconds(model: CharRNN, batch: int, precisions: tuple[str, ...],
                        budget_s: float = TIMING_S) -> dict[str, float]:
    """Seconds per step of `batch` streams with the weights held in each format, timed in turn."""
    steppers = {p: StepModel(model, p) for p in precisions}
    device = model.head.weight.device
    states = {p: steppers[p].from_module_hidden(model.init_hidden(batch, device)) for p in precisions}
    idx = torch.zeros(batch, dtype=torch.long, device=device)

    @torch.inference_mode()
    def run(precision: str) -> None:
        for _ in range(STEPS_PER_CALL):
            steppers[precision].step(idx, states[precision])

    per_call = autotune.time_interleaved({p: (lambda p=p: run(p)) for p in precisions}, budget_s,
                                         autotune.synchronizer(device))
    return {p: seconds / STEPS_PER_CALL for p, seconds in per_call.items()}


def sample_precision(precision: str, model: CharRNN, batch: int) -> autotune.Choice:
    """The weight format for stepping `batch` streams: a named one as it is; `auto` the fastest
    of fp32, bf16 (where the hardware runs bf16) and int8 (where the shapes allow it), timed on
    this model and batch, never one slower than fp32."""
    check_sample_precision(precision, model)
    if precision != "auto":
        return autotune.Choice(precision, how="named")
    device = model.head.weight.device
    candidates = ("fp32",) + (("bf16",) if autotune.bf16_possible(device) else ()) + \
        (("int8",) if int8_fits(model) else ())
    if len(candidates) == 1:
        return autotune.Choice("fp32", how="only candidate")
    shapes = {**dataclasses.asdict(model.config), "batch": batch}
    return autotune.decide("sample", shapes, device,
                           lambda: sample_step_seconds(model, batch, candidates))


class Projection:
    """base + x @ W.T with W (N, K) stored as fp32, bf16 or int8 rows with fp32->bf16 scales.

    x (B, K) in the format's activation dtype (fp32 for fp32, else bf16), base (B or 1, N) fp32
    -> (B, N) fp32, into `out` when given."""

    def __init__(self, weight: torch.Tensor, precision: str):
        weight = weight.detach().float()
        self.precision = precision
        if precision == "int8":
            scale = weight.abs().amax(1).clamp_min(1e-30) / 127  # (N,)
            self.weight = torch.round(weight / scale[:, None]).clamp_(-127, 127).to(torch.int8).contiguous()
            self.scale = scale.to(torch.bfloat16)
        else:
            self.weight = weight.to(activation_dtype(precision)).contiguous()
        self.weight_t = self.weight.t()  # (K, N) view, made once

    def __call__(self, x: torch.Tensor, base: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        if self.precision == "fp32":
            return torch.addmm(base, x, self.weight_t, out=out)
        if self.precision == "int8":
            y = torch._weight_int8pack_mm(x if x.is_contiguous() else x.contiguous(), self.weight, self.scale)
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
                self.table, self.embed_proj = None, (model.embed.weight.detach().float(),
                                                     Projection(w_ih0, precision), bias0[None])
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
            self.inputs = [None] + [(Projection(param("weight_ih", k), precision), param("bias_ih", k)[None])
                                    if not merged else None for k in range(1, self.L)]
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
        """A new state holding `rows` (B',) of `state`, in that order (streams leaving)."""
        return self._state(state.z.index_select(0, rows), [c.index_select(0, rows) for c in state.c])

    def _state(self, z: torch.Tensor, cells: list[torch.Tensor]) -> StepState:
        """A StepState over z (B, L*H) and the LSTM cells, with its work buffers and views."""
        B, H = z.size(0), self.H
        work = []
        for k in range(self.L):
            own = z[:, k * H:(k + 1) * H]  # (B, H)
            reads = own if k == 0 or self.cell == "gru" else z[:, (k - 1) * H:(k + 1) * H]
            gates = torch.empty(B, self.G * H, device=z.device)  # fp32
            views = (gates[:, :3 * H], gates[:, :H], gates[:, H:2 * H], gates[:, 2 * H:3 * H],
                     gates[:, 3 * H:], torch.empty(B, H, device=z.device)) if self.cell == "lstm" else ()
            below = z[:, (k - 1) * H:k * H] if k else None  # (B, H): a GRU layer's input
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
            self.recurrent[k](reads, first if k == 0 else self.recurrent_bias[k], out=gates)  # (B, G*H)
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
    rz = torch.add(x_part[:, :2 * H], h_part[:, :2 * H]).sigmoid_()
    n = torch.addcmul(x_part[:, 2 * H:], rz[:, :H], h_part[:, 2 * H:]).tanh_()
    torch.addcmul(n, rz[:, H:], h.float() - n, out=h)


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float) -> torch.Tensor:
    """Temperature, then keep the top-k and the smallest set whose probability reaches top-p."""
    logits = logits.double()  # shifted to a max of 0 in float64: no temperature > 0 overflows
    logits = (logits - logits.amax(-1, keepdim=True)) / temperature
    if top_k and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        before = probs.cumsum(-1) - probs  # mass strictly above each entry
        drop_sorted = before >= top_p  # the first entry always stays
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def draw(logits: torch.Tensor, gumbel: torch.Tensor, temperature: float, top_k: int | None = None,
         top_p: float = 1.0) -> torch.Tensor:
    """logits (B, V), standard Gumbel noise (B, V) -> ids (B,) distributed as
    softmax(logits / temperature) restricted to the top-k / top-p set (Gumbel-max trick)."""
    if top_k is None and top_p >= 1.0 and 1e-3 <= temperature <= 1e3:
        # argmax(logits + T*G) = argmax(logits/T + G); no overflow at these temperatures
        return torch.add(logits, gumbel, alpha=temperature).argmax(-1)
    # extreme temperatures and top-k/top-p: shifted, divided and masked in float64
    return (filter_logits(logits, temperature, top_k, top_p) + gumbel).argmax(-1)


@dataclass
class Start:
    """Streams ready to be primed: the seed used, the prefix shown (the prime, or the drawn
    first character), the ids the network reads first (the prime's, that drawn character, or a
    line break), and the Gumbel noise in blocks (n, B, V) of n steps each (none for greedy)."""

    seed: int
    shown: str
    ids: list[int]
    noise: Iterator[torch.Tensor]


class Sampler:
    """Draws text from a trained model and its vocabulary.

    Each character is drawn by the Gumbel-max trick: argmax(logits / T + G) with G standard
    Gumbel noise is an exact draw from softmax(logits / T); the noise comes from the seeded
    generator in blocks, so a step costs an add and an argmax."""

    NOISE_BLOCK = 1 << 20  # Gumbel noise values drawn at a time

    def __init__(self, model: CharRNN, vocab: Vocab, precision: str = "auto"):
        """precision: auto, fp32, bf16 or int8 for the weights while stepping (see
        sample_precision); the prime always runs through the fp32 module."""
        self.model = model.eval()
        self.vocab = vocab
        self.device = model.head.weight.device
        check_sample_precision(precision, model)  # refuse a bad choice up front
        self.precision = precision
        self.steppers: dict[str, StepModel] = {}
        self.choices: dict[int, autotune.Choice] = {}  # per batch size: what `auto` chose

    def stepper(self, batch: int) -> StepModel:
        if batch not in self.choices:
            self.choices[batch] = sample_precision(self.precision, self.model, batch)
        precision = self.choices[batch].value
        if precision not in self.steppers:
            self.steppers[precision] = StepModel(self.model, precision)
        return self.steppers[precision]

    def _prime_ids(self, prime: str, unknown: str, generator: torch.Generator) -> tuple[list[int], str]:
        """The ids the network reads first, and the prefix shown for them."""
        ids = self.vocab.encode(prime, unknown=unknown) if prime else []
        if ids:
            return ids, self.vocab.decode(ids)
        if "\n" in self.vocab:  # start as if after a line break: a natural beginning
            return [self.vocab.index["\n"]], ""
        first = int(torch.randint(len(self.vocab), (1,), generator=generator))
        return [first], self.vocab.symbols[first]

    @torch.inference_mode()
    def prime(self, idx: torch.Tensor) -> tuple[torch.Tensor, StepState]:
        """idx (B, P), rows of primes of one length, run through the network in one call ->
        the logits (B, V) of the next character and the state after them."""
        logits, hidden = self.model(idx)  # (B, P, V)
        return logits[:, -1].float(), self.stepper(idx.size(0)).from_module_hidden(hidden)

    def _noise(self, generator: torch.Generator, steps: int, batch: int):
        """Standard Gumbel noise for `steps` steps, in blocks (n, B, V)."""
        V = len(self.vocab)
        per_block = max(1, self.NOISE_BLOCK // (batch * V))
        while steps > 0:
            n = min(per_block, steps)
            block = torch.empty(n, batch, V).exponential_(generator=generator)
            block = block.clamp_min_(1e-30).log_().neg_().to(self.device)  # -log Exp(1) ~ Gumbel
            yield block
            steps -= n

    def begin(self, config: SampleConfig) -> Start:
        """Seed, prime ids and noise for `config.num_samples` streams: everything before the
        network reads the prime (`prime`). `generate` and the service's shared batch
        (batching.py) both start here, so a seed gives the same text in either."""
        seed = config.seed if config.seed is not None else int.from_bytes(os.urandom(4), "little")
        generator = torch.Generator(device="cpu").manual_seed(seed)
        ids, shown = self._prime_ids(config.prime, config.unknown, generator)
        noise = self._noise(generator, 0 if config.greedy else config.length, config.num_samples)
        return Start(seed, shown, ids, noise)

    @torch.inference_mode()
    def generate(self, config: SampleConfig,
                 on_text: Callable[[int, str], None] | None = None) -> list[str]:
        """`config.num_samples` texts of prime + `config.length` new characters.

        on_text(row, text) is called with each row's prime and then each new character as it is
        drawn, so callers can stream.
        """
        B = config.num_samples
        start = self.begin(config)
        shown = start.shown
        logits, state = self.prime(torch.tensor([start.ids] * B, device=self.device))
        noise = (step for block in start.noise for step in block)  # (B, V) per step
        pieces = [[shown] for _ in range(B)]
        if on_text and shown:
            for row in range(B):
                on_text(row, shown)
        symbols = self.vocab.symbols
        stepper = self.stepper(B)
        for _ in range(config.length):
            if config.greedy:
                idx = logits.argmax(-1)  # (B,)
            else:
                idx = draw(logits, next(noise), config.temperature, config.top_k, config.top_p)
            ids = idx.tolist()
            for row in range(B):
                char = symbols[ids[row]]
                pieces[row].append(char)
                if on_text:
                    on_text(row, char)
            logits, state = stepper.step(idx, state)
        return ["".join(p) for p in pieces]


def check_prime(vocab: Vocab, prime: str, unknown: str) -> None:
    """Refuse a prime with unknown characters up front (unless skipping), naming them."""
    if unknown == "error" and vocab.unknown_chars(prime):
        vocab.encode(prime, unknown="error")  # raises with the names
    if unknown == "skip" and prime and not vocab.encode(prime, unknown="skip"):
        raise UserError("every character of --prime is outside the vocabulary; nothing is left to prime with")

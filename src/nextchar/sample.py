"""Generating text: one step of the recurrence per character, the state carried, never the
prefix recomputed.

`StepModel` runs a CharRNN one character at a time through torch's fused cell functions
(torch.lstm_cell and friends), which costs far less per character than calling nn.LSTM on a
length-1 sequence. Its math is the CharRNN's; the tests check the two agree.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .config import SampleConfig
from .devices import resolve_precision
from .errors import UserError
from .model import CharRNN, Hidden
from .vocab import Vocab

_CELLS = {"lstm": torch.lstm_cell, "gru": torch.gru_cell,
          "rnn": torch.rnn_tanh_cell, "rnn-relu": torch.rnn_relu_cell}


class StepModel:
    """A CharRNN's weights arranged for single-character steps. Hidden: list over layers of
    (h, c) for LSTM or h, each (B, H)."""

    def __init__(self, model: CharRNN, dtype: torch.dtype = torch.float32):
        self.model = model
        self.dtype = dtype
        self.cell = _CELLS[model.config.cell]
        self.lstm = model.config.cell == "lstm"
        rnn = model.rnn
        self.layers = [(getattr(rnn, f"weight_ih_l{k}").detach(), getattr(rnn, f"weight_hh_l{k}").detach(),
                        getattr(rnn, f"bias_ih_l{k}").detach(), getattr(rnn, f"bias_hh_l{k}").detach())
                       for k in range(model.config.layers)]
        if model.embed is not None:
            self.input_table = model.embed.weight.detach()  # (V, E)
        else:  # a one-hot row times W_ih is a column of W_ih
            self.input_table = torch.eye(model.config.vocab_size, device=model.head.weight.device)
        self.head_w = model.head.weight.detach().t().contiguous()  # (H, V)
        self.head_b = model.head.bias.detach()
        if dtype != torch.float32:
            self.layers = [tuple(w.to(dtype) for w in layer) for layer in self.layers]
            self.input_table = self.input_table.to(dtype)
            self.head_w, self.head_b = self.head_w.to(dtype), self.head_b.to(dtype)

    def from_module_hidden(self, hidden: Hidden) -> list:
        if self.lstm:
            h, c = (t.to(self.dtype) for t in hidden)
            return [(h[k], c[k]) for k in range(h.size(0))]
        hidden = hidden.to(self.dtype)
        return [hidden[k] for k in range(hidden.size(0))]

    def step(self, idx: torch.Tensor, hidden: list) -> tuple[torch.Tensor, list]:
        """idx (B,) ids -> logits (B, V), next hidden."""
        x = self.input_table[idx]  # (B, E)
        new = []
        for (w_ih, w_hh, b_ih, b_hh), state in zip(self.layers, hidden):
            state = self.cell(x, state, w_ih, w_hh, b_ih, b_hh)
            new.append(state)
            x = state[0] if self.lstm else state  # (B, H)
        return torch.addmm(self.head_b, x, self.head_w), new  # (B, V)


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


class Sampler:
    """Draws text from a trained model and its vocabulary."""

    # Below this many parallel samples a step is a matrix-vector product, bound by reading the
    # weights, which fp32 kernels do best; from it on, bf16 matrix units win (BENCHMARKS.md).
    BF16_FROM_BATCH = 8

    def __init__(self, model: CharRNN, vocab: Vocab, precision: str = "fp32"):
        """precision: the run's (fp32, bf16 or auto); bf16 is used for batches of samples only."""
        self.model = model.eval()
        self.vocab = vocab
        self.device = model.head.weight.device
        self.precision = resolve_precision(precision, self.device)
        self.steppers: dict[torch.dtype, StepModel] = {}

    def stepper(self, batch: int) -> StepModel:
        bf16 = self.precision == "bf16" and batch >= self.BF16_FROM_BATCH
        dtype = torch.bfloat16 if bf16 else torch.float32
        if dtype not in self.steppers:
            self.steppers[dtype] = StepModel(self.model, dtype)
        return self.steppers[dtype]

    def _prime(self, prime: str, unknown: str, batch: int, generator: torch.Generator):
        """Run the prime through the network in one call -> (printed prefix, last logits, hidden)."""
        ids = self.vocab.encode(prime, unknown=unknown) if prime else []
        if not ids:
            if "\n" in self.vocab:  # start as if after a line break: a natural beginning
                ids, shown = [self.vocab.index["\n"]], ""
            else:
                first = int(torch.randint(len(self.vocab), (1,), generator=generator))
                ids, shown = [first], self.vocab.symbols[first]
        else:
            shown = self.vocab.decode(ids)
        idx = torch.tensor([ids] * batch, device=self.device)  # (B, P)
        logits, hidden = self.model(idx)  # (B, P, V)
        return shown, logits[:, -1], self.stepper(batch).from_module_hidden(hidden)

    @torch.inference_mode()
    def generate(self, config: SampleConfig,
                 on_text: Callable[[int, str], None] | None = None) -> list[str]:
        """`config.num_samples` texts of prime + `config.length` new characters.

        on_text(row, text) is called with each row's prime and then each new character as it is
        drawn, so callers can stream.
        """
        seed = config.seed if config.seed is not None else int.from_bytes(os.urandom(4), "little")
        generator = torch.Generator(device="cpu").manual_seed(seed)
        B = config.num_samples
        shown, logits, hidden = self._prime(config.prime, config.unknown, B, generator)
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
                filtered = filter_logits(logits.float(), config.temperature, config.top_k, config.top_p)
                probs = F.softmax(filtered, dim=-1).cpu()
                idx = torch.multinomial(probs, 1, generator=generator).squeeze(1).to(self.device)
            chars = [symbols[i] for i in idx.tolist()]
            for row, char in enumerate(chars):
                pieces[row].append(char)
                if on_text:
                    on_text(row, char)
            logits, hidden = stepper.step(idx, hidden)
        return ["".join(p) for p in pieces]


def check_prime(vocab: Vocab, prime: str, unknown: str) -> None:
    """Refuse a prime with unknown characters up front (unless skipping), naming them."""
    if unknown == "error" and vocab.unknown_chars(prime):
        vocab.encode(prime, unknown="error")  # raises with the names
    if unknown == "skip" and prime and not vocab.encode(prime, unknown="skip"):
        raise UserError("every character of --prime is outside the vocabulary; nothing is left to prime with")

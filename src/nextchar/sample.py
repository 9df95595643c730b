"""Generating text: the sampling policy over the stepping engine (stepping.py).

Which weight format steps the streams (`auto` times fp32, bf16 and int8 on this model and batch),
how a character is drawn from the logits (temperature, top-k, top-p by the Gumbel-max trick), and
the Sampler that primes the streams, steps them and hands each character to its caller. Each
sample draws from its own seeded generator (see `Stream`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from . import autotune
from .config import SampleConfig
from .errors import UserError
from .model import CharRNN, Hidden
from .stepping import StepModel, StepState, int8_fits
from .vocab import Vocab

PRECISIONS = ("auto", "fp32", "bf16", "int8")
TIMING_S = 0.1  # seconds of timing per `auto` decision (one per model shape and batch size)
STEPS_PER_CALL = 8  # steps timed together, so one timing is well above the clock's resolution


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


PRIME_CHUNK_VALUES = 1 << 22  # floats of input one call of the prime may hold (16 MB in fp32)


def row_seed(seed: int, row: int) -> int:
    """The seed of sample `row` of a request seeded with `seed`: row 0 uses the seed itself, so a
    sample's text depends on the seed and its row only, never on how many samples are drawn."""
    if row == 0:
        return seed
    digest = hashlib.blake2b(f"{seed}/{row}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # a non-negative 63-bit seed


class Stream:
    """One sample's random draws: its own seeded generator, so that its text is the same whatever
    other samples are drawn beside it."""

    def __init__(self, seed: int, vocab_size: int, block_values: int = 1 << 18):
        """block_values: noise values drawn at a time (whole steps of V each, at least one)."""
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        self.V = vocab_size
        self.block_values = block_values

    def blocks(self, steps: int) -> Iterator[torch.Tensor]:
        """Standard Gumbel noise for the next `steps` steps, in blocks (n, V). The generator's
        stream does not depend on the block size (one (n, V) draw equals n (1, V) draws), so a
        shorter sample's noise is a prefix of a longer one's."""
        n = max(1, self.block_values // self.V)
        while steps > 0:
            take = min(n, steps)
            block = torch.empty(take, self.V).exponential_(generator=self.generator)
            yield block.clamp_min_(1e-30).log_().neg_()  # -log Exp(1) ~ Gumbel
            steps -= take

    def first_id(self) -> int:
        """A uniformly drawn first character, for a vocabulary with no line break to start from."""
        return int(torch.randint(self.V, (1,), generator=self.generator))


@dataclass
class Start:
    """Streams ready to be primed: the seed used, the prefix shown (the prime, or a first
    character drawn by sample 0's generator), the ids the network reads first (the prime's, that
    character, or a line break), and the Gumbel noise in blocks (n, B, V) of n steps each, row b
    from sample b's own generator (none for greedy)."""

    seed: int
    shown: str
    ids: list[int]
    noise: Iterator[torch.Tensor]


class Sampler:
    """Draws text from a trained model and its vocabulary.

    Each character is drawn by the Gumbel-max trick: argmax(logits / T + G) with G standard
    Gumbel noise is an exact draw from softmax(logits / T). Each sample has its own seeded
    generator (see `Stream`), so a seed fixes each sample's text whatever --num-samples; with a
    fixed weight format it is also the same whatever the batch (tests check fp32 and int8), and a
    shorter sample is a prefix of a longer one. Memory does not grow with the prime (run in
    chunks) or the length (characters go to `on_text` as they are drawn)."""

    NOISE_BLOCK = 1 << 18  # noise values each sample draws at a time

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

    def run_prime(self, ids: list[int]) -> tuple[torch.Tensor, Hidden]:
        """ids of one prompt -> (logits (1, V) after its last character, hidden (L, 1, H)), run
        through the fp32 module in chunks so that a long prime costs no more memory than a short
        one."""
        module = self.model
        width = max(module.config.embed or module.config.vocab_size, module.config.hidden)
        chunk = max(64, PRIME_CHUNK_VALUES // width)
        hidden = None
        for start in range(0, len(ids), chunk):
            idx = torch.tensor([ids[start:start + chunk]], device=self.device)  # (1, t)
            out, hidden = module.rnn(module.inputs(idx), hidden)  # (1, t, H)
        return module.head(out[:, -1]).float(), hidden  # (1, V)

    def begin(self, config: SampleConfig) -> Start:
        """Seed, prime ids and noise for `config.num_samples` streams: everything before the
        network reads the prime. `generate` and the service's shared batch (batching.py) both
        start here, so a seed gives the same text in either."""
        seed = config.seed if config.seed is not None else int.from_bytes(os.urandom(4), "little")
        streams = [Stream(row_seed(seed, row), len(self.vocab), self.NOISE_BLOCK)
                   for row in range(config.num_samples)]
        ids = self.vocab.encode(config.prime, unknown=config.unknown) if config.prime else []
        if ids:
            shown = self.vocab.decode(ids)
        elif "\n" in self.vocab:  # start as if after a line break: a natural beginning
            ids, shown = [self.vocab.index["\n"]], ""
        else:  # sample 0's generator draws the first character of every sample
            first = streams[0].first_id()
            ids, shown = [first], self.vocab.symbols[first]
        steps = 0 if config.greedy else config.length
        per_stream = [stream.blocks(steps) for stream in streams]
        noise = (torch.stack(rows, 1).to(self.device) for rows in zip(*per_stream))  # (n, B, V)
        return Start(seed, shown, ids, noise)

    @torch.inference_mode()
    def prime(self, idx: torch.Tensor) -> tuple[torch.Tensor, StepState]:
        """idx (B, P), rows of primes of one length -> the logits (B, V) of the next character
        and the state after them. Each distinct prime runs once, alone (run_prime), so a row's
        numbers do not depend on what else is primed beside it."""
        unique, where = torch.unique(idx, dim=0, return_inverse=True)
        runs = [self.run_prime(row.tolist()) for row in unique]
        logits = torch.cat([r[0] for r in runs])[where]  # (B, V)
        pick = lambda h: torch.cat(h, 1)[:, where].contiguous()  # noqa: E731  (L, B, H)
        if isinstance(runs[0][1], tuple):
            hidden = tuple(pick([r[1][k] for r in runs]) for k in range(2))
        else:
            hidden = pick([r[1] for r in runs])
        return logits, self.stepper(idx.size(0)).from_module_hidden(hidden)

    @torch.inference_mode()
    def generate(self, config: SampleConfig,
                 on_text: Callable[[int, str], None] | None = None) -> list[str]:
        """`config.num_samples` texts of prime + `config.length` new characters.

        on_text(row, text) is called with each row's prime and then each new character as it is
        drawn, so that callers can stream; when it is given, nothing is kept here and the result
        is a list of empty strings. A KeyboardInterrupt stops between two characters, after every
        character drawn so far went to on_text.
        """
        B = config.num_samples
        start = self.begin(config)
        kept: list[list[str]] = [[] for _ in range(B)]
        emit = on_text if on_text is not None else lambda row, text: kept[row].append(text)
        logits, hidden = self.run_prime(start.ids)  # once for every row: (1, V), (L, 1, H)
        expand = lambda t: t.expand(t.size(0), B, t.size(2)).contiguous()  # noqa: E731
        hidden = tuple(expand(h) for h in hidden) if isinstance(hidden, tuple) else expand(hidden)
        logits = logits.expand(B, -1)
        stepper = self.stepper(B)
        state = stepper.from_module_hidden(hidden)
        if start.shown:
            for row in range(B):
                emit(row, start.shown)
        noise = (step for block in start.noise for step in block)  # (B, V) per step
        symbols = self.vocab.symbols
        for _ in range(config.length):
            if config.greedy:
                idx = logits.argmax(-1)  # (B,)
            else:
                idx = draw(logits, next(noise), config.temperature, config.top_k, config.top_p)
            for row, i in enumerate(idx.tolist()):
                emit(row, symbols[i])
            logits, state = stepper.step(idx, state)
        return ["".join(pieces) for pieces in kept]


def check_prime(vocab: Vocab, prime: str, unknown: str) -> None:
    """Refuse a prime with unknown characters up front (unless skipping), naming them."""
    if unknown == "error" and vocab.unknown_chars(prime):
        vocab.encode(prime, unknown="error")  # raises with the names
    if unknown == "skip" and prime and not vocab.encode(prime, unknown="skip"):
        raise UserError("every character of --prime is outside the vocabulary; nothing is left to prime with")

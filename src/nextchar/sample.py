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
from collections.abc import Callable

import torch

from . import autotune
from .config import WEIGHT_FORMATS, SampleConfig
from .errors import UserError
from .model import CharRNN, Hidden, evaluating
from .stepping import StepModel, int8_fits
from .vocab import Vocab

TIMING_S = 0.1  # seconds of timing per `auto` decision (one per model shape and batch size)
STEPS_PER_CALL = 8  # steps timed together, so one timing is well above the clock's resolution


def check_sample_precision(precision: str, model: CharRNN) -> None:
    """Refuse a weight format that cannot run here, before any work."""
    if precision not in WEIGHT_FORMATS:
        raise UserError(f"--weights must be one of {', '.join(WEIGHT_FORMATS)}, got {precision!r}")
    if precision == "int8" and not int8_fits(model):
        raise UserError(
            "--weights int8 needs the CPU and a hidden size (and an embedding size, "
            "for vocabularies over ~10,000 symbols) that is a multiple of 16; use bf16 or fp32"
        )


def sample_step_seconds(
    model: CharRNN, batch: int, precisions: tuple[str, ...], budget_s: float = TIMING_S
) -> dict[str, float]:
    """Seconds per step of `batch` streams with the weights held in each format, timed in turn."""
    steppers = {p: StepModel(model, p) for p in precisions}
    device = model.head.weight.device
    states = {
        p: steppers[p].from_module_hidden(model.init_hidden(batch, device)) for p in precisions
    }
    idx = torch.zeros(batch, dtype=torch.long, device=device)

    @torch.inference_mode()
    def run(precision: str) -> None:
        for _ in range(STEPS_PER_CALL):
            steppers[precision].step(idx, states[precision])

    per_call = autotune.time_interleaved(
        {p: (lambda p=p: run(p)) for p in precisions}, budget_s, autotune.synchronizer(device)
    )
    return {p: seconds / STEPS_PER_CALL for p, seconds in per_call.items()}


def sample_precision(precision: str, model: CharRNN, batch: int) -> autotune.Choice:
    """The weight format for stepping `batch` streams: a named one as it is; `auto` the fastest
    of fp32, bf16 (where the hardware runs bf16) and int8 (where the shapes allow it), timed on
    this model and batch, never one slower than fp32."""
    check_sample_precision(precision, model)
    if precision != "auto":
        return autotune.Choice(precision, how="named")
    device = model.head.weight.device
    candidates = (
        ("fp32",)
        + (("bf16",) if autotune.bf16_possible(device) else ())
        + (("int8",) if int8_fits(model) else ())
    )
    if len(candidates) == 1:
        return autotune.Choice("fp32", how="only candidate")
    shapes = {**dataclasses.asdict(model.config), "batch": batch}
    return autotune.decide(
        "sample", shapes, device, lambda: sample_step_seconds(model, batch, candidates)
    )


def filter_logits(
    logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float
) -> torch.Tensor:
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


def draw(
    logits: torch.Tensor,
    gumbel: torch.Tensor,
    temperature: float,
    top_k: int | None = None,
    top_p: float = 1.0,
) -> torch.Tensor:
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
    """One sample's random draws: its own seeded generator, so its text is the same whatever
    other samples are drawn beside it. Gumbel noise comes in blocks of (n, V), never more steps
    of it than the caller said it would read (`steps`; None: no limit)."""

    NOISE_BLOCK = 1 << 18  # noise values drawn at a time

    def __init__(self, seed: int, vocab_size: int, steps: int | None = None):
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        self.V = vocab_size
        self.block = torch.empty(0, vocab_size)
        self.used = 0
        self.undrawn = steps  # steps the caller may still read beyond those drawn (None: any)

    def noise(self) -> torch.Tensor:
        """(V,) standard Gumbel noise for the next step (the generator's stream does not depend on
        the block size: one (n, V) draw equals n (1, V) draws)."""
        self._fill()
        self.used += 1
        return self.block[self.used - 1]

    def rest(self) -> torch.Tensor:
        """(m, V): the noise of the next m steps, what is left of the current block (a new block
        once it is used up), for a caller that reads many streams' noise at once; skip() says
        how many steps of it were read."""
        self._fill()
        return self.block[self.used :]

    def skip(self, steps: int) -> None:
        self.used += steps

    def _fill(self) -> None:
        if self.used == len(self.block):
            n = max(1, self.NOISE_BLOCK // self.V)
            if self.undrawn is not None:  # a 500-step sample needs an eighth of a block
                n = max(1, min(n, self.undrawn))
                self.undrawn -= n
            block = torch.empty(n, self.V).exponential_(generator=self.generator)
            self.block = block.clamp_min_(1e-30).log_().neg_()  # -log Exp(1) ~ Gumbel
            self.used = 0

    def first_id(self) -> int:
        """A uniformly drawn first character, for a vocabulary with no line break to start from."""
        return int(torch.randint(self.V, (1,), generator=self.generator))


class Sampler:
    """Draws text from a trained model and its vocabulary.

    Each character is drawn by the Gumbel-max trick: argmax(logits / T + G) with G standard
    Gumbel noise is an exact draw from softmax(logits / T). Each sample has its own seeded
    generator (see `Stream`), so a seed fixes each sample's text whatever --num-samples; with a
    fixed weight format it is also the same whatever the batch (tests check fp32 and int8), and a
    shorter sample is a prefix of a longer one. Memory does not grow with the prime (run in
    chunks) or the length (characters go to `on_text` as they are drawn)."""

    def __init__(self, model: CharRNN, vocab: Vocab, precision: str = "auto"):
        """precision: auto, fp32, bf16 or int8 for the weights while stepping (see
        sample_precision); the prime always runs through the fp32 module."""
        self.model = model  # run in eval mode while priming (start), its mode restored after
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
            idx = torch.tensor([ids[start : start + chunk]], device=self.device)  # (1, t)
            out, hidden = module.rnn(module.inputs(idx), hidden)  # (1, t, H)
        return module.head(out[:, -1]).float(), hidden  # (1, V)

    def shared_prime(self, prime: str, unknown: str) -> tuple[list[int], str] | None:
        """The ids every row reads first and the prefix shown for them: the prime, or with none a
        line break to start after (shown as nothing); None when the vocabulary has no line break
        and each row starts from a character its own generator draws."""
        ids = self.vocab.encode(prime, unknown=unknown) if prime else []
        if ids:
            return ids, self.vocab.decode(ids)
        if "\n" in self.vocab:  # after a line break: a natural beginning
            return [self.vocab.index["\n"]], ""
        return None

    def start(
        self, prime: str, unknown: str, streams: list[Stream]
    ) -> tuple[list[str], torch.Tensor, Hidden]:
        """Prime every stream -> (each row's printed prefix, logits (B, V), hidden (L, B, H)).

        With a prime (or a line break in the vocabulary to start after), all rows share one run of
        it; otherwise each row starts from a character its own generator draws."""
        with evaluating(self.model):
            return self._start(prime, unknown, streams)

    def _start(
        self, prime: str, unknown: str, streams: list[Stream]
    ) -> tuple[list[str], torch.Tensor, Hidden]:
        shared = self.shared_prime(prime, unknown)
        B = len(streams)
        if shared is not None:
            ids, shown = shared
            logits, hidden = self.run_prime(ids)
            expand = lambda t: t.expand(t.size(0), B, t.size(2)).contiguous()  # noqa: E731
            hidden = (
                tuple(expand(h) for h in hidden) if isinstance(hidden, tuple) else expand(hidden)
            )
            return [shown] * B, logits.expand(B, -1), hidden
        firsts = [s.first_id() for s in streams]
        logits, hidden = self.model(torch.tensor(firsts, device=self.device)[:, None])  # (B, 1, V)
        return [self.vocab.symbols[i] for i in firsts], logits[:, -1].float(), hidden

    @torch.inference_mode()
    def generate(
        self, config: SampleConfig, on_text: Callable[[int, str], None] | None = None
    ) -> list[str]:
        """`config.num_samples` texts of prime + `config.length` new characters.

        on_text(row, text) is called with each row's prime and then each new character as it is
        drawn, so that callers can stream; when it is given, nothing is kept here and the result
        is a list of empty strings. A KeyboardInterrupt stops between two characters, after every
        character drawn so far went to on_text.
        """
        seed = config.seed if config.seed is not None else int.from_bytes(os.urandom(4), "little")
        B = config.num_samples
        steps = 0 if config.greedy else config.length
        streams = [Stream(row_seed(seed, row), len(self.vocab), steps) for row in range(B)]
        kept: list[list[str]] = [[] for _ in range(B)]
        emit = on_text if on_text is not None else lambda row, text: kept[row].append(text)
        shown, logits, hidden = self.start(config.prime, config.unknown, streams)
        stepper = self.stepper(B)
        state = stepper.from_module_hidden(hidden)
        for row in range(B):
            if shown[row]:
                emit(row, shown[row])
        symbols = self.vocab.symbols
        for _ in range(config.length):
            if config.greedy:
                idx = logits.argmax(-1)  # (B,)
            else:
                gumbel = torch.stack([s.noise() for s in streams]).to(self.device)  # (B, V)
                idx = draw(logits, gumbel, config.temperature, config.top_k, config.top_p)
            for row, i in enumerate(idx.tolist()):
                emit(row, symbols[i])
            logits, state = stepper.step(idx, state)
        return ["".join(pieces) for pieces in kept]


def check_prime(vocab: Vocab, prime: str, unknown: str) -> None:
    """Refuse a prime with unknown characters up front (unless skipping), naming them."""
    if unknown == "error" and vocab.unknown_chars(prime):
        vocab.encode(prime, unknown="error")  # raises with the names
    if unknown == "skip" and prime and not vocab.encode(prime, unknown="skip"):
        raise UserError(
            "every character of --prime is outside the vocabulary; nothing is left to prime with"
        )

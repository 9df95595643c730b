"""The Python API: train, load, and a Model that generates and evaluates. Thin over the library."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import DataConfig, DynamicConfig, RunConfig, SampleConfig
from .dynamic import adapt as adapt_to
from .dynamic import score_dynamic
from .errors import UserError
from .evaluate import EvalResult, score_ids
from .fields import from_dict
from .model import CharRNN
from .runfolder import load_model
from .sample import Sampler, check_prime
from .vocab import Vocab, code_points


class Model:
    """A trained character model with its vocabulary, ready to generate and score text."""

    def __init__(self, module: CharRNN, vocab: Vocab, config: RunConfig, meta: dict | None = None):
        self.module = module
        self.vocab = vocab
        self.config = config
        self.meta = meta or {}

    @property
    def device(self):
        return self.module.head.weight.device

    def generate(
        self,
        prime: str = "",
        length: int = 500,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float = 1.0,
        greedy: bool = False,
        seed: int | None = None,
        unknown: str = "error",
        num_samples: int = 1,
        precision: str = "auto",
        on_text: Callable[[int, str], None] | None = None,
        adapt: DynamicConfig | None = None,
    ) -> str | list[str]:
        """prime + `length` sampled characters (a list of texts when num_samples > 1).
        precision: the weights while stepping, auto | fp32 (exact) | bf16 | int8, as `nextchar
        sample --weights`.
        on_text(sample, text): called with each sample's prime, then each character as it is
        drawn, to stream them; nothing is then kept, and the texts returned are empty.
        adapt: first let a copy of the model learn from the prime as dynamic evaluation does
        (nextchar.dynamic), then sample from that copy; this Model is not changed."""
        config = SampleConfig(
            length=length,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            greedy=greedy,
            num_samples=num_samples,
            seed=seed,
            prime=prime,
            unknown=unknown,
        )
        check_prime(self.vocab, prime, unknown)
        module = self.module
        if adapt is not None:
            ids = self.vocab.ids_of_points(code_points(prime))
            ids = ids[ids >= 0]  # as the sampler reads it (unknown='skip' drops the others)
            if len(ids) < 2:
                raise UserError(
                    "adapting needs a prime of two or more characters to learn from (--prime)"
                )
            module = adapt_to(self.module, ids, adapt, self.device)
        texts = Sampler(module, self.vocab, precision).generate(config, on_text)
        return texts[0] if num_samples == 1 else texts

    def evaluate(
        self, text: str, precision: str | None = None, dynamic: DynamicConfig | None = None
    ) -> EvalResult:
        """Score `text` with carried state. Characters outside the vocabulary are taken out of
        the stream before scoring (the model reads past them) and counted in `unknown_chars`.
        precision: fp32, bf16 or auto; by default the one the model was trained with.
        dynamic: score with dynamic evaluation instead (fp32; see nextchar.dynamic): the model
        adapts a copy of itself to the text as it reads; this Model is not changed."""
        precision = precision or self.config.train.precision
        ids = self.vocab.ids_of_points(code_points(text))
        unknown = ids < 0
        result = self.evaluate_ids(ids[~unknown], precision, dynamic)
        if unknown.any():
            from dataclasses import replace

            result = replace(
                result,
                unknown_chars=int(unknown.sum()),
                unknown_symbols=self.vocab.unknown_chars(text),
            )
        return result

    def evaluate_ids(
        self, ids: np.ndarray, precision: str | None = None, dynamic: DynamicConfig | None = None
    ) -> EvalResult:
        """Score an array of ids, by default in the precision the model was trained with (or
        with dynamic evaluation, see `evaluate`)."""
        if dynamic is not None:
            return score_dynamic(self.module, ids, dynamic, self.device)
        precision = precision or self.config.train.precision
        return score_ids(self.module, ids, device=self.device, precision=precision)


def _check_device(device: Any) -> None:
    """A device nextchar can use here ('cpu', 'cuda', 'cuda:1', 'mps', or a torch.device)."""
    from .devices import resolve_device

    kind = getattr(device, "type", device)
    if not isinstance(kind, str) or kind.split(":")[0] not in ("cpu", "cuda", "mps"):
        raise UserError(f"device must be cpu, cuda or mps (or a torch.device), got {device!r}")
    resolve_device(kind.split(":")[0])  # refuses a device this machine does not have


def load(path: str | os.PathLike, which: str = "best", device: str = "cpu") -> Model:
    """Load a run folder's model (its best weights by default) onto `device`."""
    _check_device(device)
    module, vocab, config, meta = load_model(path, which, device)
    return Model(module, vocab, config, meta)


@dataclass
class Run:
    """A finished (or stopped) training run."""

    path: Path
    steps: int
    elapsed: float
    best_val: EvalResult | None
    test: EvalResult | None
    sample: str

    def load(self, which: str = "best", device: str = "cpu") -> Model:
        return load(self.path, which, device)


def train(
    inputs: str | Sequence[str] | None = None,
    out: str | os.PathLike | None = None,
    *,
    text: str | None = None,
    resume: str | os.PathLike | None = None,
    force: bool = False,
    quiet: bool = True,
    **options: Any,
) -> Run:
    """Train a model; returns the Run. `inputs`: files, directories, a prepared data folder, or
    None for the bundled corpus; or pass the training `text` itself. `options` are any fields of
    DataConfig, ModelConfig or TrainConfig (steps=, time=, hidden=, cell=, lr=, ...)."""
    from .launch import launch

    for name, value in (("force", force), ("quiet", quiet)):
        if not isinstance(value, bool):
            raise UserError(f"{name} must be True or False, got {value!r}")
    if text is not None and not isinstance(text, str):
        raise UserError(f"text must be a string, got {type(text).__name__}")
    for name, value in (("out", out), ("resume", resume)):
        if value is not None and not isinstance(value, (str, os.PathLike)):
            raise UserError(f"{name} must be a path, got {value!r}")
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [str(inputs)]
    if text is not None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "text.txt"
            path.write_text(text, encoding="utf-8")
            result = launch(
                [str(path)],
                out,
                resume=resume,
                force=force,
                quiet=quiet,
                command="nextchar.train(text=...)",
                options=options,
            )
    else:
        result = launch(
            inputs,
            out,
            resume=resume,
            force=force,
            quiet=quiet,
            command="nextchar.train(...)",
            options=options,
        )
    return Run(
        result.folder, result.steps, result.elapsed, result.best_val, result.test, result.sample
    )


def prepare(
    inputs: str | Sequence[str], out: str | os.PathLike, *, force: bool = False, **options: Any
) -> Path:
    """Encode text into a memory-mapped data folder for `train` (options: DataConfig fields).
    `force` replaces a data folder that nextchar prepared, and nothing else."""
    from .data import prepare as prepare_data

    if not isinstance(force, bool):
        raise UserError(f"force must be True or False, got {force!r}")
    if not str(out).strip():
        raise UserError("out is empty; name a folder")
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [str(inputs)]
    config = from_dict(DataConfig, options, "nextchar.prepare")
    return prepare_data(inputs, out, config, force=force)

"""The run folder: everything needed to sample, evaluate or resume, written atomically.

    RUN/
      config.json         RunConfig (data, model, train) with its format version
      vocab.json          the symbols
      command.txt         the command line that made the run
      data/               the prepared training text (when trained from text files)
      source.json         the fingerprint of the data it trained on (and that data's folder
                          when it is not data/)
      best.safetensors    weights with the best validation loss
      latest.safetensors  weights + optimizer + carried hidden state + RNG (+ the weight average,
                          with --average): the resume point
      metrics.jsonl       one JSON record per line: TrainRecord, EvalRecord, FinalRecord,
                          SkippedRecord, RegularisedRecord (metrics.py)
      machine.json        the machine it ran on and what `auto` chose there, with the timings
      .nextchar.lock      held (flock) by the one process writing the run; see folderlock.py

What a checkpoint holds, and how it is checked when read, is checkpoint.py's. Every file is
written to a temporary name, fsynced and renamed over the old one (atomic.py): a crash at any
moment leaves the previous complete file in place.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from .atomic import CheckpointWriteError, atomic_write, is_temp, remove_temps
from .checkpoint import build_model, read_weights, vocab_digest, weights_fit
from .config import CHECKPOINTS, RunConfig
from .data import TokenData, is_prepared, load_prepared, overlaps
from .errors import UserError
from .fields import one_of
from .folderlock import LOCK, FolderLock, acquire
from .metrics import Record, parse_record, record_line
from .model import CharRNN
from .vocab import Vocab

CONFIG = "config.json"
VOCAB = "vocab.json"
BEST = "best.safetensors"
LATEST = "latest.safetensors"
METRICS = "metrics.jsonl"
COMMAND = "command.txt"
DATA = "data"
SOURCE = "source.json"  # where the prepared data lives when it is not in data/
MACHINE = "machine.json"  # the machine and the choices `auto` made on it


class DataChanged(UserError):
    """The run's prepared data is no longer the data it trained on."""


def check_output_file(path: str | os.PathLike, flag: str) -> None:
    """Refuse, before any work, a file path that cannot be written: empty, a folder, or in a folder
    that does not exist."""
    if not str(path).strip():
        raise UserError(f"{flag} is empty (an unset shell variable?); name a file")
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder; name a file in it")
    if not path.parent.is_dir():
        raise UserError(f"cannot write {path}: the folder {path.parent} does not exist")


class RunFolder:
    """Paths and file-level operations of one run folder."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name

    def exists(self) -> bool:
        return self.file(CONFIG).is_file()

    def is_run(self) -> bool:
        """Whether the folder provably holds a nextchar run: a config.json that nextchar wrote
        (format version and sections that parse), not merely the absence of other files."""
        try:
            self.read_config()
        except UserError:
            return False
        return True

    def check_new(self, inputs: list[str], force: bool) -> None:
        """Refuse an --out that a new run may not use. Usable: a new or empty folder (but for our
        lock and temporary files), or with `force` a nextchar run that neither holds nor lies
        inside an input. Nothing else is ever replaced."""
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"--out {self.path} exists and is not a directory")
        if not self.path.exists():
            return
        if not [p for p in self.path.iterdir() if p.name != LOCK and not is_temp(p.name)]:
            return
        if not self.is_run():
            raise UserError(
                f"--out {self.path} is not empty and holds no nextchar run; nextchar "
                f"only replaces its own run folders: pick a new or empty folder"
            )
        if not force:
            raise UserError(
                f"{self.path} already holds a run; use --resume {self.path} to continue "
                f"it, --force to overwrite it, or another --out"
            )
        for item in inputs:
            if Path(item).exists() and overlaps(self.path, item):
                raise UserError(
                    f"--force would replace the run in {self.path}, which overlaps the "
                    f"input {item} (one holds the other); pick another --out"
                )

    def create(self) -> None:
        """Make the folder (checked by check_new) and check that it can be written."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise UserError(f"cannot write to --out {self.path}: {exc.strerror}") from None

    def lock(self, purpose: str) -> FolderLock:
        """This process's exclusive hold on the folder as its one writer (see folderlock.py)."""
        return acquire(self.path, purpose)

    def clear_previous(self) -> None:
        """Remove what a previous run left (for --force, once the new run's input checked out)."""
        for name in (BEST, LATEST, METRICS, SOURCE, MACHINE, "report.html", "curves.png"):
            try:
                self.file(name).unlink()
            except FileNotFoundError:
                pass

    def write_setup(self, config: RunConfig, vocab: Vocab, command: str) -> None:
        self.write_config(config)
        atomic_write(self.file(VOCAB), vocab.to_json() + "\n")
        atomic_write(self.file(COMMAND), command + "\n")

    def read_command(self) -> str:
        """command.txt: the command line that made the run ("" when it is missing or unreadable)."""
        try:
            return self.file(COMMAND).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            return ""

    def write_config(self, config: RunConfig) -> None:
        atomic_write(self.file(CONFIG), config.to_json() + "\n")

    def write_source(self, fingerprint: str, data: str | os.PathLike | None = None) -> None:
        """source.json: the data's fingerprint (binds the run to its data), and its folder when
        that is not data/ (read back by `source`)."""
        source = {"fingerprint": fingerprint}
        if data is not None:
            source["data"] = str(Path(data).resolve())
        atomic_write(self.file(SOURCE), json.dumps(source) + "\n")

    def write_machine(self, record: dict[str, Any]) -> None:
        atomic_write(self.file(MACHINE), json.dumps(record, indent=2) + "\n")

    def read_machine(self) -> dict[str, Any]:
        """machine.json, or {} when it is missing or unreadable (runs made before it existed)."""
        try:
            record = json.loads(self.file(MACHINE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}

    def read_config(self) -> RunConfig:
        if not self.path.is_dir():
            raise UserError(f"no run folder at {self.path}")
        try:
            text = self.file(CONFIG).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UserError(f"{self.path} is not a run folder (no {CONFIG})") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read {self.file(CONFIG)}: {exc}") from None
        return RunConfig.from_json(text, str(self.file(CONFIG)))

    def read_vocab(self) -> Vocab:
        try:
            text = self.file(VOCAB).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            raise UserError(f"{self.path} has no readable {VOCAB}") from None
        return Vocab.from_json(text, str(self.file(VOCAB)))

    def append_metrics(self, record: Record) -> None:
        try:
            with open(self.file(METRICS), "a", encoding="utf-8") as f:
                f.write(record_line(record) + "\n")
        except OSError as exc:  # a line cut short is skipped by read_metrics
            raise CheckpointWriteError(
                f"could not write {self.file(METRICS)}: {exc.strerror or exc}"
            ) from None

    def read_records(self) -> list[Record]:
        """metrics.jsonl as typed records; a line that is no record (see parse_record) is left out."""
        return [r for r in map(parse_record, self.read_metrics()) if r is not None]

    def truncate_metrics(self, step: int) -> None:
        """Drop the lines logged after `step`, as they were (a resumed run continues from there)."""
        kept = [r for r in self.read_metrics() if r.get("step", 0) <= step]
        atomic_write(self.file(METRICS), "".join(json.dumps(r) + "\n" for r in kept))

    def remove_stray_temps(self) -> list[Path]:
        """Delete the temporary files of writes that a crash cut short (see atomic.py); returns them."""
        return remove_temps(self.path)

    def read_metrics(self) -> list[dict[str, Any]]:
        """metrics.jsonl's lines as JSON objects, as written (read_records gives them typed)."""
        try:
            lines = self.file(METRICS).read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        records = []
        for line in lines:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
        return records

    def source(self) -> dict[str, Any]:
        """source.json: the data's fingerprint, and its folder when not in data/ ({} if none)."""
        try:
            source = json.loads(self.file(SOURCE).read_text())
        except (OSError, ValueError):
            return {}
        return source if isinstance(source, dict) else {}

    def training_data(self) -> TokenData:
        """The prepared text the run trained on: its data/ folder, or the one source.json names.
        Data that is no longer what the run recorded (prepared again from other text) raises
        DataChanged; runs from before fingerprints are checked by their vocabulary only."""
        source = self.source()
        if is_prepared(self.file(DATA)):
            where = str(self.file(DATA))
        elif isinstance(source.get("data"), str):
            where = source["data"]
            if not is_prepared(where):
                raise UserError(f"the prepared data {where} that {self.path} trained on is gone")
        else:
            raise UserError(f"{self.path} has neither its data folder nor a pointer to one")
        data = load_prepared(where)
        recorded = source.get("fingerprint")
        if (recorded and data.fingerprint != recorded) or data.vocab != self.read_vocab():
            raise DataChanged(
                f"the data in {where} is not the data {self.path} trained on (it was "
                f"prepared again from other text); prepare it again from the run's "
                f"original text, or train a new run on it"
            )
        return data

    def split_data(self, config) -> TokenData:
        """The run's data cut into the splits it trained with (config.data's fractions): the one
        place that decides them for eval, report, resume and the benchmarks."""
        return self.training_data().resplit(config.data.val_frac, config.data.test_frac)

    def check_data(self) -> None:
        """Refuse a run whose data changed under it (data that is gone is not checked)."""
        try:
            self.training_data()
        except DataChanged:
            raise
        except UserError:
            pass

    def weights_path(self, which: str = "best") -> Path:
        """The weights file `which` (config.CHECKPOINTS) names; best falls back to latest before
        the first evaluation has written best.safetensors."""
        if which not in CHECKPOINTS:
            raise UserError(f"--checkpoint must be {one_of(CHECKPOINTS)}, got {which!r}")
        path = self.file(BEST if which == "best" else LATEST)
        if which == "best" and not path.exists() and self.file(LATEST).exists():
            path = self.file(LATEST)
        return path


def load_model(
    path: str | os.PathLike, which: str = "best", device: str | torch.device = "cpu"
) -> tuple[CharRNN, Vocab, RunConfig, dict]:
    """A trained CharRNN from a run folder (on `device`), its vocab, config and checkpoint metadata."""
    folder = RunFolder(path)
    config = folder.read_config()
    vocab = folder.read_vocab()
    if len(vocab) != config.model.vocab_size:
        raise UserError(
            f"{folder.file(VOCAB)} has {len(vocab)} symbols but the model was built for "
            f"{config.model.vocab_size}: the vocab does not match the weights"
        )
    if config.model.vocab_size < 2:
        raise UserError(f"{folder.file(CONFIG)} describes no usable model (vocab_size < 2)")
    weights, meta = read_weights(folder.weights_path(which))
    if meta.get("vocab", vocab_digest(vocab)) != vocab_digest(vocab):
        raise UserError(
            f"{folder.file(VOCAB)} is not the vocabulary {folder.weights_path(which)} "
            f"was trained with: the vocab does not match the weights"
        )
    if not weights_fit(weights, config.model):
        raise UserError(
            f"{folder.weights_path(which)} does not match the model in "
            f"{folder.file(CONFIG)} (different shapes or names)"
        )
    return build_model(weights, config.model).to(device), vocab, config, meta

"""Text -> token array (memory-mapped) -> splits -> contiguous streams -> (x, y) windows.

A prepared data folder holds:
    tokens.bin   the whole corpus as ids, smallest sufficient unsigned integer type
    vocab.json   the symbols (sorted by code point)
    data.json    dtype, length, split offsets and the source files

Preparation streams through the files twice (symbols, then ids) in chunks (encode.py), so its
memory does not grow with the corpus. Training reads windows straight from the memory map.

Streams (B = 3 here) cut the training split into contiguous pieces, each read in windows of T;
the hidden state of row b carries from window w to w + 1, so the model sees context beyond T:

    split:   |--------- stream 0 ---------|--------- stream 1 ---------|-------- stream 2 --------|
    window:  | w0  | w1  | w2  | w3  | w4 || w0  | w1  | w2  | w3  | w4 || w0  | w1  | w2  | w3 |w4 |
    batch w = rows (stream 0 window w, stream 1 window w, stream 2 window w)

Every position of the split except its first is a target exactly once per epoch: streams differ
in length by at most one, and positions past a stream's end are padded with IGNORE.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import is_temp, temp_path
from .config import DataConfig, RunConfig
from .corpus import discover
from .encode import dtype_for, symbols_of, write_ids
from .errors import UserError
from .folderlock import LOCK, acquire
from .vocab import Vocab, describe_chars

IGNORE = -100  # target id that the loss skips (torch's CrossEntropyLoss default ignore_index)
DATA_FORMAT = 1


def split_bounds(length: int, val_frac: float, test_frac: float) -> dict[str, tuple[int, int]]:
    """Positional splits: train = first part, then val, then test."""
    n_test = int(round(length * test_frac))
    n_val = int(round(length * val_frac))
    train_end = length - n_val - n_test
    val_end = length - n_test
    return {"train": (0, train_end), "val": (train_end, val_end), "test": (val_end, length)}


PREPARED_MARK = "nextchar prepared data"  # in data.json: what proves a folder is ours to replace
_PREPARED_FILES = ("data.json", "tokens.bin", "vocab.json")


def _ours_or_empty(folder: Path) -> str | None:
    """None when `folder` may be written: missing, empty (but for our lock and temporary files),
    or a data folder that nextchar prepared; otherwise what it is instead."""
    if not folder.exists():
        return None
    if not folder.is_dir():
        return "a file"
    names = [p.name for p in folder.iterdir() if p.name != LOCK and not is_temp(p.name)]
    if not names:
        return None
    try:
        marked = json.loads((folder / "data.json").read_text()).get("nextchar") == PREPARED_MARK
    except (OSError, ValueError, AttributeError):
        marked = False
    if marked and set(names) <= set(_PREPARED_FILES):
        return None
    if is_prepared(folder) and not marked:
        return "data prepared before nextchar marked its folders (remove it yourself to replace it)"
    return "files nextchar did not make"


def overlaps(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether one of two paths is, holds or lies inside the other."""
    a, b = Path(a).resolve(), Path(b).resolve()
    return a == b or a in b.parents or b in a.parents


def check_output_folder(out: Path, inputs, force: bool) -> None:
    """Refuse an --out for prepared data that nextchar cannot prove is its own to replace."""
    what = _ours_or_empty(out)
    if what is not None:
        raise UserError(
            f"--out {out} holds {what}; nextchar only replaces a data folder it "
            f"prepared: pick a new or empty folder"
        )
    if is_prepared(out) and not force:
        raise UserError(
            f"{out} already holds prepared data; use --force to replace it or pick another --out"
        )
    if not is_prepared(out):
        return
    for item in inputs:  # what --force would replace
        if Path(item).exists() and overlaps(out, item):
            raise UserError(
                f"--out {out} and the input {item} overlap (one holds the other); "
                f"pick an --out outside the inputs"
            )
    try:
        RunConfig.from_json((out.parent / "config.json").read_text())
    except (OSError, UnicodeDecodeError, UserError):
        return
    raise UserError(
        f"--out {out} is the data folder of the run in {out.parent}; pick another --out"
    )


def prepare(
    inputs,
    out: str | os.PathLike,
    config: DataConfig | None = None,
    vocab: Vocab | None = None,
    *,
    force: bool = False,
    lock: bool = True,
    say=None,
) -> Path:
    """Encode text files into a prepared data folder at `out`; returns its path.

    `out` must be new, empty, or (with `force`) a folder nextchar prepared that neither holds nor
    lies inside an input. Unless `lock` is False (the caller holds a lock on a folder above),
    `out` is locked for this process while it is written. `say` hears of each file skipped."""
    config = config if config is not None else DataConfig()
    out = Path(out)
    paths = discover(inputs, say)
    if not paths:
        raise UserError("no input text given")
    check_output_folder(out, inputs, force)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot make --out {out}: {exc.strerror}") from None
    with acquire(out, "preparing data") if lock else contextlib.nullcontext():
        check_output_folder(out, inputs, force)  # again, now that no other writer can change it
        try:
            _prepare_into(out, paths, config, vocab)
        except BaseException:
            if created:
                shutil.rmtree(out, ignore_errors=True)
            raise
    return out


def _prepare_into(out: Path, paths: list[Path], config: DataConfig, vocab: Vocab | None) -> None:
    if vocab is None:
        symbols, total = symbols_of(paths, config)
        if total == 0:
            raise UserError(f"the input is empty: {', '.join(map(str, paths))}")
        if len(symbols) < 2:
            raise UserError(
                f"the text has only one distinct character, {describe_chars(symbols)}; "
                f"a model needs at least two to predict anything"
            )
        vocab = Vocab(symbols)
    dtype = dtype_for(len(vocab))

    def write(folder: Path) -> None:
        with open(folder / "tokens.bin", "wb") as f:
            length, sources, digest = write_ids(paths, vocab, dtype, config, f)
            f.flush()
            os.fsync(f.fileno())
        if length == 0:
            raise UserError(f"the input is empty: {', '.join(map(str, paths))}")
        meta = {
            "nextchar": PREPARED_MARK,
            "format": DATA_FORMAT,
            "dtype": dtype.name,
            "length": length,
            "fingerprint": fingerprint(length, dtype.name, vocab, digest),
            "splits": split_bounds(length, config.val_frac, config.test_frac),
            "sources": sources,
            "encoding": config.encoding,
            "errors": config.errors,
        }
        (folder / "data.json").write_text(json.dumps(meta, indent=2))
        (folder / "vocab.json").write_text(vocab.to_json())

    # built beside the old files, then moved over them: data.json goes first and comes back last,
    # so a reader sees the old data, no data, or the new data
    build = temp_path(out / "build")
    shutil.rmtree(build, ignore_errors=True)
    build.mkdir()
    try:
        write(build)
        (out / "data.json").unlink(missing_ok=True)
        for name in ("tokens.bin", "vocab.json", "data.json"):
            os.replace(build / name, out / name)
    finally:
        shutil.rmtree(build, ignore_errors=True)


def fingerprint(length: int, dtype: str, vocab: Vocab, tokens_digest: str) -> str:
    """What identifies a prepared corpus: its size, its symbols and a hash of its ids, computed
    once while preparing and kept in data.json; a run records it to know its data again."""
    digest = hashlib.blake2b(digest_size=12)
    digest.update(json.dumps([length, dtype, vocab.to_json(), tokens_digest]).encode())
    return digest.hexdigest()


@dataclass
class TokenData:
    """A prepared corpus: ids (memory-mapped), vocab and split offsets."""

    tokens: np.ndarray  # (N,) unsigned ints
    vocab: Vocab
    splits: dict[str, tuple[int, int]]
    sources: list[dict]
    folder: Path | None = None
    fingerprint: str | None = None  # None for data prepared before fingerprints

    def split(self, name: str) -> np.ndarray:
        lo, hi = self.splits[name]
        return self.tokens[lo:hi]

    def text(self, name: str, limit: int | None = None) -> str:
        lo, hi = self.splits[name]
        hi = hi if limit is None else min(hi, lo + limit)
        return self.vocab.decode(np.asarray(self.tokens[lo:hi]))

    def fractions(self) -> tuple[float, float]:
        """(val_frac, test_frac) that give back these splits (split_bounds rounds length x frac)."""
        n = max(1, len(self.tokens))
        return tuple((hi - lo) / n for lo, hi in (self.splits["val"], self.splits["test"]))

    def resplit(self, val_frac: float, test_frac: float) -> TokenData:
        splits = split_bounds(len(self.tokens), val_frac, test_frac)
        return TokenData(
            self.tokens, self.vocab, splits, self.sources, self.folder, self.fingerprint
        )


def is_prepared(path: str | os.PathLike) -> bool:
    path = Path(path)
    return path.is_dir() and (path / "data.json").is_file() and (path / "tokens.bin").is_file()


def load_prepared(folder: str | os.PathLike) -> TokenData:
    folder = Path(folder)
    try:
        meta = json.loads((folder / "data.json").read_text())
        vocab = Vocab.from_json((folder / "vocab.json").read_text(), str(folder / "vocab.json"))
        dtype = np.dtype(meta["dtype"])
        length = int(meta["length"])
        splits = {k: (int(v[0]), int(v[1])) for k, v in meta["splits"].items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{folder} is not a valid prepared data folder ({exc})") from None
    if meta.get("format", 0) > DATA_FORMAT:
        raise UserError(f"{folder} was prepared by a newer nextchar; upgrade to read it")
    size = (folder / "tokens.bin").stat().st_size
    if size != length * dtype.itemsize:
        raise UserError(
            f"{folder}/tokens.bin holds {size} bytes, expected {length * dtype.itemsize}: "
            f"the data folder is truncated or damaged; prepare it again"
        )
    tokens = np.memmap(folder / "tokens.bin", dtype=dtype, mode="r", shape=(length,))
    return TokenData(
        tokens, vocab, splits, meta.get("sources", []), folder, meta.get("fingerprint")
    )


class Streams:
    """Contiguous streams over one split, read in windows of `seq_len`; see the module docstring.

    `rows` picks the streams this process owns (all by default; a DDP rank owns a slice), so
    every rank reads a disjoint part of the same global batch.
    """

    def __init__(
        self, tokens: np.ndarray, batch_size: int, seq_len: int, rows: slice | None = None
    ):
        n_targets = len(tokens) - 1
        if n_targets < 1:
            raise UserError("the training split needs at least two characters")
        if batch_size > n_targets:
            raise UserError(
                f"the training split has {n_targets + 1} characters, fewer than "
                f"--batch-size {batch_size} streams need; lower --batch-size"
            )
        self.tokens = tokens
        self.batch_size = batch_size
        self.seq_len = seq_len
        base, extra = divmod(n_targets, batch_size)
        self.lengths = np.full(batch_size, base, dtype=np.int64)  # (B,) targets per stream
        self.lengths[:extra] += 1
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)  # (B,)
        self.windows_per_epoch = int(-(-int(self.lengths.max()) // seq_len))
        self.rows = rows if rows is not None else slice(0, batch_size)

    def __len__(self) -> int:
        return self.windows_per_epoch

    def window(self, index: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Window `index` of an epoch -> (x, y, valid targets in the global batch).

        x, y: (rows, width) int64; y is IGNORE where a stream has ended.
        """
        offset = index * self.seq_len
        width = min(self.seq_len, int(self.lengths.max()) - offset)
        steps = np.arange(width + 1, dtype=np.int64)  # (W+1,)
        valid_all = (offset + steps[None, :-1]) < self.lengths[:, None]  # (B, W)
        starts = self.starts[self.rows]
        positions = np.minimum(starts[:, None] + offset + steps[None, :], len(self.tokens) - 1)
        chunk = np.asarray(self.tokens[positions], dtype=np.int64)  # (rows, W+1)
        x = chunk[:, :-1]
        y = np.where(valid_all[self.rows], chunk[:, 1:], IGNORE)
        return x, y, int(valid_all.sum())

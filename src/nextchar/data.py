"""Text -> token array (memory-mapped) -> splits -> contiguous streams -> (x, y) windows.

A prepared data folder holds:
    tokens.bin   the whole corpus as ids, smallest sufficient unsigned integer type
    vocab.json   the symbols (sorted by code point)
    data.json    dtype, length, split offsets and the source files

Preparation streams through the files twice (symbols, then ids) in chunks, so its memory does
not grow with the corpus. Training reads windows straight from the memory map.

Streams (B = 3 here) cut the training split into contiguous pieces, each read in windows of T;
the hidden state of row b carries from window w to w + 1, so the model sees context beyond T:

    split:   |--------- stream 0 ---------|--------- stream 1 ---------|-------- stream 2 --------|
    window:  | w0  | w1  | w2  | w3  | w4 || w0  | w1  | w2  | w3  | w4 || w0  | w1  | w2  | w3 |w4 |
    batch w = rows (stream 0 window w, stream 1 window w, stream 2 window w)

Every position of the split except its first is a target exactly once per epoch: streams differ
in length by at most one, and positions past a stream's end are padded with IGNORE.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import DataConfig
from .corpus import discover, iter_chunks
from .errors import UserError
from .vocab import Vocab, code_points, describe_chars

IGNORE = -100  # target id that the loss skips (torch's CrossEntropyLoss default ignore_index)
DATA_FORMAT = 1
_BMP = 0x10000


def dtype_for(vocab_size: int) -> np.dtype:
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    raise UserError(f"vocabulary of {vocab_size} symbols is too large")


def split_bounds(length: int, val_frac: float, test_frac: float) -> dict[str, tuple[int, int]]:
    """Positional splits: train = first part, then val, then test."""
    n_test = int(round(length * test_frac))
    n_val = int(round(length * val_frac))
    train_end = length - n_val - n_test
    val_end = length - n_test
    return {"train": (0, train_end), "val": (train_end, val_end), "test": (val_end, length)}


def _symbols_of(paths: list[Path], config: DataConfig) -> tuple[list[str], int]:
    """Distinct characters of all files and their total count, one chunk at a time."""
    seen_bmp = np.zeros(_BMP, dtype=bool)
    astral: set[int] = set()
    total = 0
    for path in paths:
        for chunk in iter_chunks(path, config.encoding, config.errors):
            points = code_points(chunk)
            total += len(points)
            small = points[points < _BMP]
            seen_bmp[np.unique(small) if len(small) < 4096 else np.flatnonzero(np.bincount(small))] = True
            if len(small) != len(points):
                astral.update(np.unique(points[points >= _BMP]).tolist())
    points = sorted(np.flatnonzero(seen_bmp).tolist() + sorted(astral))
    return [chr(p) for p in points], total


def _atomic_dir_write(out: Path, write) -> None:
    """Build a folder under a temporary name and rename it into place when complete."""
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def prepare(inputs, out: str | os.PathLike, config: DataConfig | None = None,
            vocab: Vocab | None = None) -> Path:
    """Encode text files into a prepared data folder at `out`; returns its path."""
    config = config if config is not None else DataConfig()
    paths = discover(inputs)
    if not paths:
        raise UserError("no input text given")
    if vocab is None:
        symbols, total = _symbols_of(paths, config)
        if total == 0:
            raise UserError(f"the input is empty: {', '.join(map(str, paths))}")
        if len(symbols) < 2:
            raise UserError(f"the text has only one distinct character, {describe_chars(symbols)}; "
                            f"a model needs at least two to predict anything")
        vocab = Vocab(symbols)
    dtype = dtype_for(len(vocab))
    out = Path(out)

    def write(folder: Path) -> None:
        length = 0
        sources = []
        with open(folder / "tokens.bin", "wb") as f:
            for path in paths:
                chars = 0
                for chunk in iter_chunks(path, config.encoding, config.errors):
                    ids = vocab.ids_of_points(code_points(chunk))
                    if (ids < 0).any():
                        unknown = vocab.unknown_chars(chunk)
                        raise UserError(f"{path}: characters not in the vocabulary: "
                                        f"{describe_chars(unknown)}")
                    f.write(ids.astype(dtype).tobytes())
                    chars += len(ids)
                sources.append({"path": str(path), "chars": chars})
                length += chars
            f.flush()
            os.fsync(f.fileno())
        if length == 0:
            raise UserError(f"the input is empty: {', '.join(map(str, paths))}")
        meta = {"format": DATA_FORMAT, "dtype": dtype.name, "length": length,
                "splits": split_bounds(length, config.val_frac, config.test_frac),
                "sources": sources, "encoding": config.encoding, "errors": config.errors}
        (folder / "data.json").write_text(json.dumps(meta, indent=2))
        (folder / "vocab.json").write_text(vocab.to_json())

    _atomic_dir_write(out, write)
    return out


@dataclass
class TokenData:
    """A prepared corpus: ids (memory-mapped), vocab and split offsets."""

    tokens: np.ndarray  # (N,) unsigned ints
    vocab: Vocab
    splits: dict[str, tuple[int, int]]
    sources: list[dict]
    folder: Path | None = None

    def split(self, name: str) -> np.ndarray:
        lo, hi = self.splits[name]
        return self.tokens[lo:hi]

    def text(self, name: str, limit: int | None = None) -> str:
        lo, hi = self.splits[name]
        hi = hi if limit is None else min(hi, lo + limit)
        return self.vocab.decode(np.asarray(self.tokens[lo:hi]))

    def resplit(self, val_frac: float, test_frac: float) -> TokenData:
        splits = split_bounds(len(self.tokens), val_frac, test_frac)
        return TokenData(self.tokens, self.vocab, splits, self.sources, self.folder)


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
        raise UserError(f"{folder}/tokens.bin holds {size} bytes, expected {length * dtype.itemsize}: "
                        f"the data folder is truncated or damaged; prepare it again")
    tokens = np.memmap(folder / "tokens.bin", dtype=dtype, mode="r", shape=(length,))
    return TokenData(tokens, vocab, splits, meta.get("sources", []), folder)


class Streams:
    """Contiguous streams over one split, read in windows of `seq_len`; see the module docstring.

    `rows` picks the streams this process owns (all by default; a DDP rank owns a slice), so
    every rank reads a disjoint part of the same global batch.
    """

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int,
                 rows: slice | None = None):
        n_targets = len(tokens) - 1
        if n_targets < 1:
            raise UserError("the training split needs at least two characters")
        if batch_size > n_targets:
            raise UserError(f"the training split has {n_targets + 1} characters, fewer than "
                            f"--batch-size {batch_size} streams need; lower --batch-size")
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

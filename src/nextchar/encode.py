"""Text files -> ids, in chunks, so that memory does not grow with the corpus (data.prepare's
two passes): the distinct symbols of the files, then their ids written to the token file.

Both passes read fixed-size chunks (corpus.py). The first looks at a UTF-8 file's ASCII bytes
without decoding them; the second encodes ASCII text by one byte translation and the rest through
a code point -> id table, while a second thread writes the previous chunk.
"""

from __future__ import annotations

import codecs
import hashlib
import queue
import threading
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .config import DataConfig
from .corpus import is_utf8, iter_bytes, iter_chunks
from .errors import UserError
from .vocab import Vocab, code_points, describe_chars

_BMP = 0x10000


def dtype_for(vocab_size: int) -> np.dtype:
    """The smallest unsigned integer type that holds the ids of `vocab_size` symbols."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    raise UserError(f"vocabulary of {vocab_size} symbols is too large")


_ASCII = bytes(range(0x80))
_NOT_ASCII = bytes(range(0x80, 0x100))


class _Symbols:
    """The distinct code points seen so far, and how many characters held them."""

    def __init__(self) -> None:
        self.ascii = bytearray()  # distinct ASCII bytes
        self.bmp = np.zeros(_BMP, dtype=bool)
        self.astral: set[int] = set()
        self.total = 0

    def add_ascii(self, raw: bytes) -> None:
        """Only the ASCII bytes of `raw` are looked at (C-speed bytes.translate, no decoding)."""
        rest = raw.translate(None, bytes(self.ascii) + _NOT_ASCII)  # ASCII bytes not seen yet
        while rest:
            new = bytes(sorted(set(rest[: 1 << 16])))
            self.ascii += new
            rest = rest.translate(None, new)

    def add_points(self, points: np.ndarray) -> None:
        small = points[points < _BMP]
        self.bmp[
            np.unique(small) if len(small) < 1 << 16 else np.flatnonzero(np.bincount(small))
        ] = True
        if len(small) != len(points):
            self.astral.update(np.unique(points[points >= _BMP]).tolist())

    def add_text(self, text: str) -> None:
        self.total += len(text)
        if text.isascii():  # O(1) in CPython
            self.add_ascii(text.encode("ascii"))
        else:
            self.add_points(code_points(text))

    def add_utf8(self, path: Path) -> None:
        """Symbols of a UTF-8 file without decoding its ASCII bytes: only the multi-byte
        sequences (the bytes >= 0x80, which stay valid UTF-8 once the ASCII bytes between them are
        taken out) are decoded. Bad bytes are not reported here: the second, strict pass does that
        with their offsets."""
        try:
            with open(path, "rb") as f:
                bom = f.read(3) == codecs.BOM_UTF8
        except OSError as exc:
            raise UserError(f"cannot read {path}: {exc.strerror}") from None
        decoder = codecs.getincrementaldecoder("utf-8-sig" if bom else "utf-8")("replace")
        for raw in iter_bytes(path):
            wide = raw.translate(None, _ASCII)
            self.total += len(raw) - len(wide)
            self.add_ascii(raw)
            if wide:
                text = decoder.decode(wide)
                self.total += len(text)
                self.add_points(code_points(text))
        text = decoder.decode(b"", final=True)
        self.total += len(text)
        self.add_points(code_points(text))

    def symbols(self) -> list[str]:
        self.bmp[list(self.ascii)] = True
        return [chr(p) for p in np.flatnonzero(self.bmp).tolist() + sorted(self.astral)]


def symbols_of(paths: list[Path], config: DataConfig) -> tuple[list[str], int]:
    """Distinct characters of all files (sorted by code point) and their total count, one chunk
    at a time."""
    seen = _Symbols()
    fast = is_utf8(config.encoding) and config.errors == "strict"
    for path in paths:
        if fast:
            seen.add_utf8(path)
        else:
            for chunk in iter_chunks(path, config.encoding, config.errors):
                seen.add_text(chunk)
    return seen.symbols(), seen.total


class _Encoder:
    """Text -> ids of `dtype` through one code point -> id table; None when a character is
    not in the vocabulary."""

    def __init__(self, vocab: Vocab, dtype: np.dtype):
        self.dtype = dtype
        points = np.array([ord(s) for s in vocab.symbols], dtype=np.int64)
        self.missing = len(vocab)  # the table's value for code points outside the vocabulary
        self.table = np.full(int(points.max()) + 1, self.missing, dtype=dtype_for(len(vocab) + 1))
        self.table[points] = np.arange(len(vocab))
        ascii_ids = {p: i for i, p in enumerate(points.tolist()) if p < 0x80}
        self.ascii_known = bytes(sorted(ascii_ids))
        self.ascii_table = (
            None  # bytes.translate table: ASCII byte -> its id, when all ids fit a byte
        )
        if all(i < 0x100 for i in ascii_ids.values()):
            self.ascii_table = bytes(ascii_ids.get(b, 0) for b in range(0x100))

    def __call__(self, text: str) -> np.ndarray | None:
        if text.isascii() and self.ascii_table is not None:  # a C-speed byte translation
            raw = text.encode("ascii")
            if raw.translate(None, self.ascii_known):
                return None
            ids = np.frombuffer(raw.translate(self.ascii_table), dtype=np.uint8)
            return ids.astype(self.dtype, copy=False)
        points = code_points(text)
        if len(points) and int(points.max()) >= len(self.table):
            return None
        ids = self.table[points]
        if (ids == self.missing).any():
            return None
        return ids.astype(self.dtype, copy=False)


class _BackgroundWriter:
    """Writes arrays to an open file from a second thread, so that encoding the next chunk
    overlaps the disk (file writes release the GIL). At most `depth` chunks wait in memory."""

    def __init__(self, f, depth: int = 2):
        self.f = f
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.error: OSError | None = None
        self.digest = hashlib.blake2b(digest_size=16)  # of the ids, as written (releases the GIL)
        self.thread = threading.Thread(
            target=self._run, name="nextchar-prepare-writer", daemon=True
        )
        self.thread.start()

    def _run(self) -> None:
        while (ids := self.queue.get()) is not None:
            if self.error is None:
                try:
                    self.digest.update(memoryview(ids))
                    self.f.write(memoryview(ids))
                except OSError as exc:
                    self.error = exc

    def _check(self) -> None:
        if self.error is not None:
            raise UserError(f"cannot write {self.f.name}: {self.error.strerror or self.error}")

    def write(self, ids: np.ndarray) -> None:
        self._check()
        self.queue.put(ids)

    def close(self) -> None:
        """Wait for every write; a failed one raises UserError."""
        self.queue.put(None)
        self.thread.join()
        self._check()


def write_ids(
    paths: list[Path], vocab: Vocab, dtype: np.dtype, config: DataConfig, f: BinaryIO
) -> tuple[int, list[dict], str]:
    """Encode every file into the open file `f` as ids of `dtype`, chunk by chunk -> (ids
    written, each file's path and characters, a hash of the ids as written). A character outside
    `vocab` is a UserError naming it."""
    encode = _Encoder(vocab, dtype)
    length = 0
    sources = []
    writer = _BackgroundWriter(f)
    try:
        for path in paths:
            chars = 0
            for chunk in iter_chunks(path, config.encoding, config.errors):
                ids = encode(chunk)
                if ids is None:
                    unknown = vocab.unknown_chars(chunk)
                    raise UserError(
                        f"{path}: characters not in the vocabulary: {describe_chars(unknown)}"
                    )
                writer.write(ids)
                chars += len(ids)
            sources.append({"path": str(path), "chars": chars})
            length += chars
    finally:
        writer.close()
    return length, sources, writer.digest.hexdigest()

"""Vocab: the symbols a model knows, and the mapping between text and integer ids.

A symbol is one Unicode code point, so text is never split mid-character. Encoding of long
texts is vectorised with NumPy (a code point -> id lookup table); torch is imported only for
`one_hot`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from .config import UNKNOWN_POLICIES
from .errors import UserError

if TYPE_CHECKING:
    import torch


def code_points(text: str) -> np.ndarray:
    """The text's code points as a uint32 array (one per character)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def describe_chars(chars: Iterable[str], limit: int = 10) -> str:
    """'x', '\\t' (U+0009), ... for messages: printable and unambiguous."""
    chars = list(chars)
    shown = [f"{c!r} (U+{ord(c):04X})" for c in chars[:limit]]
    more = f" and {len(chars) - limit} more" if len(chars) > limit else ""
    return ", ".join(shown) + more


class Vocab:
    """An ordered set of single-character symbols; id i <-> symbols[i]."""

    def __init__(self, symbols: Sequence[str]):
        symbols = list(symbols)
        for s in symbols:
            if not isinstance(s, str) or len(s) != 1:
                raise UserError(f"a vocabulary symbol must be one character, got {s!r}")
        if len(set(symbols)) != len(symbols):
            raise UserError("vocabulary symbols must be distinct")
        if not symbols:
            raise UserError("a vocabulary needs at least one symbol")
        self.symbols: list[str] = symbols
        self.index: dict[str, int] = {s: i for i, s in enumerate(symbols)}
        self._points = np.array([ord(s) for s in symbols], dtype=np.int64)
        self._lookup: np.ndarray | None = None

    @classmethod
    def from_text(cls, text: str, order: str = "sorted") -> Vocab:
        """The distinct characters of `text`, sorted by code point or in order of first appearance."""
        if order == "sorted":
            return cls(sorted(set(text)))
        if order == "first":
            return cls(list(dict.fromkeys(text)))
        raise ValueError(f"order must be 'sorted' or 'first', got {order!r}")

    def __len__(self) -> int:
        return len(self.symbols)

    @property
    def size(self) -> int:
        return len(self.symbols)

    def __contains__(self, char: str) -> bool:
        return char in self.index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.symbols == other.symbols

    def __repr__(self) -> str:
        return (
            f"Vocab({''.join(self.symbols)!r})" if len(self) <= 40 else f"Vocab(size={len(self)})"
        )

    def _table(self) -> np.ndarray:
        """Dense code point -> id table (-1 = unknown), sized to the largest code point."""
        if self._lookup is None:
            table = np.full(int(self._points.max()) + 1, -1, dtype=np.int64)
            table[self._points] = np.arange(len(self.symbols))
            self._lookup = table
        return self._lookup

    def ids_of_points(self, points: np.ndarray) -> np.ndarray:
        """Code points -> ids, -1 where a point is not in the vocabulary."""
        table = self._table()
        points = points.astype(np.int64, copy=False)
        inside = points < len(table)
        ids = np.full(points.shape, -1, dtype=np.int64)
        ids[inside] = table[points[inside]]
        return ids

    def unknown_chars(self, text: str) -> list[str]:
        """Characters of `text` that are not in the vocabulary, in order of first appearance."""
        return [c for c in dict.fromkeys(text) if c not in self.index]

    def encode(self, text: str, unknown: str = "error") -> list[int]:
        """Text -> ids. Unknown characters raise UserError naming them, or are dropped with 'skip'."""
        return self.encode_array(text, unknown).tolist()

    def encode_array(self, text: str, unknown: str = "error") -> np.ndarray:
        if unknown not in UNKNOWN_POLICIES:
            raise ValueError(f"unknown must be one of {UNKNOWN_POLICIES}, got {unknown!r}")
        ids = self.ids_of_points(code_points(text))
        missing = ids < 0
        if missing.any():
            if unknown == "error":
                raise UserError(
                    f"characters not in the model's vocabulary: "
                    f"{describe_chars(self.unknown_chars(text))} "
                    f"(use --unknown skip to drop them)"
                )
            ids = ids[~missing]
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        symbols = self.symbols
        return "".join(symbols[int(i)] for i in ids)

    def one_hot(self, text_or_ids: str | Sequence[int]) -> torch.Tensor:
        """Float one-hot rows, shape (len, V): 'hello' with vocab h,e,l,o -> (5, 4)."""
        import torch

        ids = self.encode(text_or_ids) if isinstance(text_or_ids, str) else list(text_or_ids)
        return torch.nn.functional.one_hot(torch.tensor(ids, dtype=torch.long), len(self)).float()

    def to_json(self) -> str:
        return json.dumps({"symbols": self.symbols}, ensure_ascii=True)

    @classmethod
    def from_json(cls, text: str, where: str = "vocab.json") -> Vocab:
        try:
            raw = json.loads(text)
            symbols = raw["symbols"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(f"{where} is not a valid vocabulary file") from None
        if not isinstance(symbols, list):
            raise UserError(f"{where} is not a valid vocabulary file")
        return cls(symbols)

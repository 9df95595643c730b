"""Finding text files and decoding them in bounded-size chunks, with precise errors.

Nothing here holds a whole corpus in memory: `iter_chunks` yields decoded pieces of a file.
"""

from __future__ import annotations

import codecs
import json
import os
from collections.abc import Callable, Iterator, Sequence
from importlib import resources
from pathlib import Path

from .errors import UserError

BUNDLED = {"tinyshakespeare": "tinyshakespeare.txt"}
CHUNK_BYTES = 1 << 20  # small pieces stay in cache: faster than larger ones, and less memory
_SNIFF_BYTES = 8192


def bundled_path(name: str = "tinyshakespeare") -> Path:
    """Path of a corpus shipped inside the package."""
    return Path(str(resources.files("nextchar") / "corpora" / BUNDLED[name]))


def _looks_binary(path: Path) -> bool:
    with open(path, "rb") as f:
        return b"\x00" in f.read(_SNIFF_BYTES)


def nextchar_folder(path: Path) -> str | None:
    """What nextchar folder `path` is ('a run folder', 'a prepared data folder'), or None."""
    if (path / "data.json").is_file() and (path / "tokens.bin").is_file():
        return "a prepared data folder"
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(config, dict) and "format_version" in config and "model" in config:
        return "a run folder"
    return None


def _text_files(folder: Path, say: Callable[[str], None]) -> list[Path]:
    """The text files under `folder`, sorted; what is skipped is told to `say`, with why."""
    found = []
    for root, dirs, files in os.walk(folder):
        root_path = Path(root)
        keep = []
        for name in sorted(dirs):
            sub = root_path / name
            own = None if name.startswith(".") else nextchar_folder(sub)
            if name.startswith("."):
                say(f"skipped {sub}/: hidden")
            elif own:
                say(f"skipped {sub}/: {own} of nextchar's own")
            else:
                keep.append(name)
        dirs[:] = keep
        for name in sorted(files):
            path = root_path / name
            if name.startswith("."):
                say(f"skipped {path}: hidden")
                continue
            try:
                binary = path.is_file() and _looks_binary(path)
            except OSError as exc:
                say(f"skipped {path}: unreadable ({exc.strerror})")
                continue
            if not path.is_file():
                say(f"skipped {path}: not a regular file")
            elif binary:
                say(f"skipped {path}: binary (it holds NUL bytes)")
            else:
                found.append(path)
    return sorted(found)


def discover(
    inputs: Sequence[str | os.PathLike], say: Callable[[str], None] | None = None
) -> list[Path]:
    """Files named, and the text files inside directories named (recursively, sorted). Skipped,
    and told to `say` with the reason: hidden files, binary files (NUL bytes), unreadable ones,
    and nextchar's own folders (runs, prepared data). The bundled corpus's name is accepted too."""
    say = say or (lambda line: None)
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if str(item) in BUNDLED and not path.exists():
            files.append(bundled_path(str(item)))
        elif path.is_dir():
            own = nextchar_folder(path)
            if own:
                raise UserError(
                    f"{path} is {own} of nextchar, not text; give the text it came from"
                )
            found = _text_files(path, say)
            if not found:
                raise UserError(f"directory {path} holds no text files")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        elif path.exists():
            raise UserError(f"{path} is not a regular file or directory")
        else:
            raise UserError(f"no such file or directory: {path}")
    return files


def _decoder(encoding: str, errors: str) -> codecs.IncrementalDecoder:
    try:
        info = codecs.lookup(encoding)
    except LookupError:
        raise UserError(
            f"unknown encoding {encoding!r} (try utf-8, latin-1, shift_jis, ...)"
        ) from None
    if info.name == "utf-8":
        info = codecs.lookup("utf-8-sig")  # a leading byte-order mark is not text
    return info.incrementaldecoder(errors=errors)


def is_utf8(encoding: str) -> bool:
    """Whether `encoding` names UTF-8 (which gets byte-level fast paths)."""
    try:
        return codecs.lookup(encoding).name == "utf-8"
    except LookupError:
        return False


def iter_bytes(path: Path, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """Raw pieces of `path`, `chunk_bytes` at a time (the last may be shorter; never empty)."""
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    with f:
        while data := f.read(chunk_bytes):
            yield data


def iter_chunks(
    path: Path, encoding: str = "utf-8", errors: str = "strict", chunk_bytes: int = CHUNK_BYTES
) -> Iterator[str]:
    """Decoded pieces of `path`. An undecodable byte raises UserError naming the file and offset."""
    decoder = _decoder(encoding, errors)
    offset = 0  # bytes of the file handed to the decoder so far
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    with f:
        while True:
            data = f.read(chunk_bytes)
            final = not data
            pending = len(decoder.getstate()[0])
            try:
                text = decoder.decode(data, final=final)
            except UnicodeDecodeError as exc:
                bad = offset - pending + exc.start
                raise UserError(
                    f"{path} is not valid {encoding}: byte 0x{exc.object[exc.start]:02x} at offset "
                    f"{bad} ({exc.reason}); pass --encoding to name its encoding, or "
                    f"--errors replace to substitute U+FFFD"
                ) from None
            offset += len(data)
            if text:
                yield text
            if final:
                return


def read_text(
    inputs: Sequence[str | os.PathLike], encoding: str = "utf-8", errors: str = "strict"
) -> str:
    """Whole text of the inputs, for small corpora and evaluation texts."""
    return "".join(
        chunk for path in discover(inputs) for chunk in iter_chunks(path, encoding, errors)
    )

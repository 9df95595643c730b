"""How a config field is declared and checked: the `option(...)` and `internal(...)` field
makers that config.py declares every option with, the type and choice checks every config runs
in `__post_init__`, the dict round trip that refuses unknown keys, and durations (90s, 3m, 1.5h).

Standard library only, so `nextchar --help` stays fast.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import operator
import re
from typing import Any, TypeVar

from .errors import UserError

C = TypeVar("C")


def option(
    default: Any,
    help: str,
    *,
    choices: tuple[str, ...] = (),
    metavar: str | None = None,
    parse: str | None = None,
    train: Any = dataclasses.MISSING,
    shown: str | None = None,
    steps_field: str | None = None,
) -> Any:
    """A config field that is also a flag: `--field-name`, made by nextchar.cli.options.

    help: what it does, one line; choices: the values it takes (checked here for every caller);
    parse: how the flag reads a value other than by its type, "duration" (90s, 3m, 1.5h) or
    "steps or duration" (500 steps or 10m; `steps_field` holds the steps);
    train: `nextchar train`'s default where it is not the library's;
    shown: the default in --help where the value would not say what it means ("" shows none;
    "{default}" stands for the value)."""
    return dataclasses.field(
        default=default,
        metadata={
            "flag": True,
            "help": help,
            "choices": choices,
            "metavar": metavar,
            "parse": parse,
            "train": train,
            "shown": shown,
            "steps_field": steps_field,
        },
    )


def internal(default: Any) -> Any:
    """A config field that no flag sets: filled in from the data, or a safety limit."""
    return dataclasses.field(default=default, metadata={"flag": False})


def is_option(f: dataclasses.Field) -> bool:
    return bool(f.metadata.get("flag"))


def train_defaults(*classes: type) -> dict[str, Any]:
    """`nextchar train`'s defaults that differ from the library's (an option's `train=`)."""
    return {
        f.name: f.metadata["train"]
        for cls in classes
        for f in dataclasses.fields(cls)
        if is_option(f) and f.metadata["train"] is not dataclasses.MISSING
    }


def require(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def one_of(choices: tuple[str, ...]) -> str:
    """'strict or replace' / 'one of auto, cpu, cuda, mps', for messages."""
    if len(choices) == 2:
        return " or ".join(choices)
    return "one of " + ", ".join(choices)


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool) or type(value).__name__ == "bool_"  # numpy's too


def _as_int(value: Any) -> int | None:
    """An int (numpy integers welcome) or None; bools and floats are not ints."""
    if _is_bool(value) or isinstance(value, float):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _as_float(value: Any) -> float | None:
    """A finite float from an int or float (numpy's too), or None; bools are not numbers."""
    if _is_bool(value) or not isinstance(value, numbers.Real):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def check_types(config: Any, prefix: str = "") -> None:
    """Every field of a config dataclass has its declared type, so the CLI, the Python API and
    config.json all pass the same checks: numpy integers become ints, an int becomes a float where
    a float is due; bools are not numbers, floats are not ints, and strings are not numbers. A
    field with choices holds one of them. `prefix`: of the flags' names (dynamic_ for --dynamic-lr)."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        kind = f.type.replace(" ", "")
        if kind == "int|None" and value is None:
            continue
        if kind in ("int", "int|None"):
            number, expected = _as_int(value), "a whole number"
        elif kind == "float":
            number, expected = _as_float(value), "a finite number"
        elif kind == "bool":
            number, expected = (bool(value) if _is_bool(value) else None), "true or false"
        else:  # str
            number, expected = (value if isinstance(value, str) else None), "a string"
        if number is None:
            raise UserError(f"{flag_name(prefix + f.name)} must be {expected}, got {value!r}")
        choices = f.metadata.get("choices")
        if choices and number not in choices:
            raise UserError(
                f"{flag_name(prefix + f.name)} must be {one_of(choices)}, got {value!r}"
            )
        object.__setattr__(config, f.name, number)


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def from_dict(cls: type[C], data: dict[str, Any], where: str = "config") -> C:
    """Build `cls` from a dict, refusing keys it does not know (naming them)."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a JSON object for {cls.__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserError(f"{where}: unknown key(s) for {cls.__name__}: {', '.join(unknown)}")
    for f in dataclasses.fields(cls):  # JSON types must match the defaults' (an int stays an int)
        default = f.default
        if default is None or default is dataclasses.MISSING or f.name not in data:
            continue
        kinds = (int, float) if type(default) is float else (type(default),)
        if type(data[f.name]) not in kinds:
            raise UserError(
                f"{where}: {f.name} must be {type(default).__name__}, got {data[f.name]!r}"
            )
    try:
        return cls(**data)
    except TypeError as exc:
        raise UserError(f"{where}: {exc}") from None


_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(s|sec|m|min|h|hr)?\s*$", re.IGNORECASE)
_UNIT_SECONDS = {None: 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hr": 3600.0}


def parse_duration(text: str, flag: str = "--time") -> float:
    """'90' / '90s' / '3m' / '1.5h' -> seconds (positive)."""
    match = _DURATION.match(str(text))
    if not match:
        raise UserError(f"{flag} must be a duration such as 90s, 3m or 1.5h, got {text!r}")
    unit = match.group(2).lower() if match.group(2) else None
    seconds = float(match.group(1)) * _UNIT_SECONDS[unit]
    if seconds <= 0:
        raise UserError(f"{flag} must be longer than zero, got {text!r}")
    return seconds

"""Flags made from config fields: every `option(...)` field of a config dataclass (config.py)
becomes `--field-name` (with a prefix: `--dynamic-lr`), with its type, choices and help, and its
default said in the help. Adding an option is one field in config.py; its flag follows."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from ..errors import UserError
from ..fields import is_option, parse_duration

TYPES = {"int": int, "int|None": int, "float": float}  # str needs no conversion


def duration(text: str) -> float:
    """'90' / '90s' / '3m' / '1.5h' -> seconds; argparse names the flag in its error."""
    try:
        return parse_duration(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("--time ", "")) from None


def steps_or_duration(text: str) -> tuple[str, float]:
    """'500' -> steps; '10m', '90s' -> seconds."""
    text = text.strip()
    if text.isdigit():
        return ("steps", float(int(text)))
    return ("seconds", duration(text))


PARSERS = {"duration": duration, "steps or duration": steps_or_duration}


class Renamed(argparse.Action):
    """A flag's old name: it sets the new flag's value and says so, in one line on stderr.
    Add it with the new flag's `dest`, after the new flag (whose default stands)."""

    def __init__(self, option_strings, dest, new_name: str, **kwargs):
        super().__init__(
            option_strings, dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs
        )
        self.new_name = new_name

    def __call__(self, parser, namespace, values, option_string=None):
        sys.stderr.write(
            f"{parser.prog}: {option_string} is deprecated here; it is now "
            f"{self.new_name} {values}\n"
        )
        setattr(namespace, self.dest, values)


def flag_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of config class `cls` that are flags (not those filled in by the library)."""
    return [f for f in dataclasses.fields(cls) if is_option(f)]


def flag_name(field_name: str, prefix: str = "") -> str:
    return "--" + (prefix + field_name).replace("_", "-")


def _seconds_text(seconds: float) -> str:
    return f"{seconds / 60:g}m" if seconds >= 60 and seconds % 60 == 0 else f"{seconds:g}s"


def shown_default(f: dataclasses.Field, value: Any) -> str:
    """How --help words the default `value` of field `f` ("" for none)."""
    shown = f.metadata["shown"]
    if shown is not None:
        return shown.format(default=value)
    if isinstance(value, bool):
        return "on" if value else "off"
    if f.metadata["parse"]:  # seconds
        return _seconds_text(value)
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"{value:,}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def add_options(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    title: str | None = None,
    prefix: str = "",
    fill: bool = True,
    only: tuple[str, ...] | None = None,
    defaults: dict[str, Any] | None = None,
) -> None:
    """A flag per option field of `cls` (or of those named in `only`), in a group `title`.

    fill: each flag's default is its field's. Otherwise it is None, so that only the flags given
    reach the library, which fills in the rest (train: the budget rule picks some);
    --help still says the default, `defaults[name]` where the command has its own."""
    group = parser.add_argument_group(title) if title else parser
    for f in flag_fields(cls):
        if only is not None and f.name not in only:
            continue
        meta = f.metadata
        shown = shown_default(f, (defaults or {}).get(f.name, f.default))
        said = ": " if meta["shown"] else " "  # "(default 0.05)", "(default: about 10 per run)"
        text = meta["help"] + (f" (default{said}{shown})" if shown else "")
        kwargs: dict[str, Any] = {
            "help": text.replace("%", "%%"),
            "default": f.default if fill else None,
        }
        if meta["metavar"]:
            kwargs["metavar"] = meta["metavar"]
        kind = f.type.replace(" ", "")
        if kind == "bool":  # --x (and --no-x where unset means "the library's default")
            kwargs["action"] = "store_true" if fill else argparse.BooleanOptionalAction
            if fill and f.default is not False:
                raise ValueError(f"{f.name}: a flag that only turns on needs the default False")
        else:
            kwargs["type"] = PARSERS[meta["parse"]] if meta["parse"] else TYPES.get(kind)
            if meta["choices"]:
                kwargs["choices"] = meta["choices"]
        group.add_argument(flag_name(f.name, prefix), **kwargs)


def options_given(args: argparse.Namespace, *classes: type) -> dict[str, Any]:
    """The option fields of `classes` whose flags were given (added with fill=False), by field
    name; a "steps or duration" flag fills its steps field or its seconds."""
    options: dict[str, Any] = {}
    for cls in classes:
        for f in flag_fields(cls):
            value = getattr(args, f.name)
            if value is None:
                continue
            if f.metadata["parse"] == "steps or duration":
                kind, number = value
                if kind == "steps":
                    options[f.metadata["steps_field"]] = int(number)
                    value = 0.0
                else:
                    value = number
            options[f.name] = value
    return options


def config_from(args: argparse.Namespace, cls: type, prefix: str = "") -> Any:
    """An instance of `cls` from its flags (added with fill=True)."""
    return cls(**{f.name: getattr(args, prefix + f.name) for f in flag_fields(cls)})

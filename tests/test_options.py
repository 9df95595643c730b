"""Every option is declared once, as a config field (config.py), and its flag is made from it: a
config field without a flag, or a flag without a field (other than a command's own, listed here),
fails here; the one would be out of reach, the other silently ignored."""

import dataclasses

import pytest

from nextchar import config
from nextchar.cli import build_parser
from nextchar.cli.options import config_from, options_given
from nextchar.config import (
    DataConfig,
    DynamicConfig,
    LessonConfig,
    ModelConfig,
    SampleConfig,
    ServeLimits,
    TrainConfig,
)
from nextchar.fields import is_option

NOT_FLAGS = {
    "vocab_size",  # filled in from the data
    "max_bad_steps",  # a safety limit, not a user's choice
    "checkpoint_every_steps",
}  # --checkpoint-every 500 (steps) or 10m (seconds)
# per command: the config classes its flags are made from (prefix, the fields taken: all when
# None), and its own flags, about the command itself rather than the library's options
COMMANDS = {
    "train": (
        [(DataConfig, "", None), (ModelConfig, "", None), (TrainConfig, "", None)],
        {"inputs", "out", "force", "resume", "quiet", "json"},
    ),
    "prepare": ([(DataConfig, "", None)], {"inputs", "out", "force", "quiet"}),
    "eval": (
        [(DataConfig, "", ("encoding", "errors")), (DynamicConfig, "dynamic_", None)],
        {"run", "texts", "split", "checkpoint", "device", "precision", "dynamic", "json"},
    ),
    "sample": (
        [(SampleConfig, "", None), (DynamicConfig, "dynamic_", None)],
        {"run", "checkpoint", "device", "weights", "adapt", "json"},
    ),
    "serve": (
        [(ServeLimits, "", None)],
        {
            "runs",
            "host",
            "port",
            "api_key",
            "allow_public",
            "weights",
            "checkpoint",
            "device",
            "quiet",
        },
    ),
    "hihello": ([(LessonConfig, "", None)], {"json"}),
}


def subparser(command: str):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices[command]


def flags_of(command: str) -> dict:
    return {a.dest: a for a in subparser(command)._actions if a.dest != "help"}


def config_classes() -> list[type]:
    return [
        c
        for c in vars(config).values()
        if isinstance(c, type) and dataclasses.is_dataclass(c) and c.__module__ == config.__name__
    ]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_config_field_has_a_flag_and_every_flag_a_field(command):
    sources, own = COMMANDS[command]
    fields = {
        prefix + f.name
        for cls, prefix, only in sources
        for f in dataclasses.fields(cls)
        if f.name not in NOT_FLAGS and (only is None or f.name in only)
    }
    flags = set(flags_of(command)) - own
    assert fields - flags == set(), "config fields without a flag"
    assert flags - fields == set(), "flags without a config field"


def test_fields_that_are_no_flags_are_the_ones_named_here():
    """A field left out of the CLI is a decision: NOT_FLAGS lists each with its reason."""
    internal = {
        f.name
        for cls in config_classes()
        for f in dataclasses.fields(cls)
        if not is_option(f) and cls is not config.RunConfig
    }
    assert internal == NOT_FLAGS


def test_every_config_class_with_options_has_a_command():
    with_options = {cls for cls in config_classes() if any(map(is_option, dataclasses.fields(cls)))}
    reached = {cls for sources, _ in COMMANDS.values() for cls, _, _ in sources}
    assert with_options == reached


@pytest.mark.parametrize("command", COMMANDS)
def test_flags_carry_the_fields_type_choices_and_help(command):
    flags = flags_of(command)
    for cls, prefix, only in COMMANDS[command][0]:
        for f in dataclasses.fields(cls):
            if not is_option(f) or (only is not None and f.name not in only):
                continue
            action = flags[prefix + f.name]
            assert action.help.startswith(f.metadata["help"].replace("%", "%%")), f.name
            assert tuple(action.choices or ()) == f.metadata["choices"], f.name
            if f.type in ("int", "int | None"):
                assert action.type is int, f.name
            elif f.type == "float" and not f.metadata["parse"]:
                assert action.type is float, f.name


def test_train_flags_default_to_none_so_the_library_fills_the_rest():
    """A flag's own default would hide the config's (and the budget rule's) default."""
    for dest, action in flags_of("train").items():
        if dest not in COMMANDS["train"][1]:
            assert action.default is None, dest
    args = build_parser().parse_args(["train"])
    assert options_given(args, DataConfig, ModelConfig, TrainConfig) == {}


def test_train_options_given_reach_the_library_by_field_name():
    args = build_parser().parse_args(
        [
            "train",
            "--hidden",
            "8",
            "--no-compile",
            "--time",
            "2m",
            "--checkpoint-every",
            "500",
            "--errors",
            "replace",
        ]
    )
    assert options_given(args, DataConfig, ModelConfig, TrainConfig) == {
        "hidden": 8,
        "compile": False,
        "time": 120.0,
        "checkpoint_every": 0.0,
        "checkpoint_every_steps": 500,
        "errors": "replace",
    }
    args = build_parser().parse_args(["train", "--checkpoint-every", "10m"])
    assert options_given(args, TrainConfig) == {"checkpoint_every": 600.0}


@pytest.mark.parametrize(
    "argv, cls, prefix",
    [
        (["sample", "RUN"], SampleConfig, ""),
        (["sample", "RUN"], DynamicConfig, "dynamic_"),
        (["eval", "RUN"], DynamicConfig, "dynamic_"),
        (["serve", "RUN"], ServeLimits, ""),
        (["prepare", "T", "--out", "D"], DataConfig, ""),
    ],
)
def test_flags_left_out_give_the_config_defaults(argv, cls, prefix):
    assert config_from(build_parser().parse_args(argv), cls, prefix) == cls()


def test_help_says_the_defaults_of_the_command():
    train = flags_of("train")
    assert "(default 64)" in train["embed"].help  # train's own, not ModelConfig's 0
    assert "(default 0.05)" in train["val_frac"].help and "(default: 3m " in train["time"].help
    assert "(default 2m)" in train["checkpoint_every"].help
    assert "(default: 300s)" in flags_of("serve")["request_timeout"].help
    assert "(default 0.1)" in flags_of("sample")["dynamic_lr"].help


@pytest.mark.parametrize("command", ["sample", "serve"])
def test_weights_is_the_sampler_weight_format_and_precision_its_old_name(command, capsys):
    parser = build_parser()
    assert parser.parse_args([command, "RUN"]).weights == "auto"
    assert parser.parse_args([command, "RUN", "--weights", "int8"]).weights == "int8"
    assert capsys.readouterr().err == ""
    assert parser.parse_args([command, "RUN", "--precision", "bf16"]).weights == "bf16"
    err = capsys.readouterr().err
    assert err == f"nextchar {command}: --precision is deprecated here; it is now --weights bf16\n"
    assert "--precision" not in subparser(command).format_help()  # the old name is not offered
    with pytest.raises(SystemExit):
        parser.parse_args([command, "RUN", "--precision", "fp8"])  # checked as --weights is

"""Every training option is declared in config.py and reachable from the CLI: a config field
without a `train` flag, or a flag without a field, fails here (it would be silently ignored)."""

import dataclasses

from nextchar.cli import build_parser
from nextchar.cli.parser import TRAIN_OPTION_FLAGS
from nextchar.config import DataConfig, ModelConfig, TrainConfig

NOT_OPTIONS = {"vocab_size"}  # filled in from the data
INTERNAL = {"max_bad_steps"}  # a safety limit, not a user's choice
SPELLED_TOGETHER = {"checkpoint_every", "checkpoint_every_steps"}  # one flag: --checkpoint-every 10m|500
RUN_FLAGS = {"inputs", "out", "force", "resume", "quiet", "json", "command"}  # about the run, not its config


def train_flags() -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    train = sub.choices["train"]
    return {a.dest for a in train._actions if a.dest != "help"}


def config_fields() -> set[str]:
    return {f.name for cls in (DataConfig, ModelConfig, TrainConfig) for f in dataclasses.fields(cls)}


def test_every_config_field_has_a_flag_and_every_flag_a_field():
    fields = config_fields() - NOT_OPTIONS - INTERNAL
    flags = train_flags() - RUN_FLAGS
    assert fields - flags == {"checkpoint_every_steps"}  # the steps form of --checkpoint-every
    assert flags - fields == set()
    assert set(TRAIN_OPTION_FLAGS) == fields - SPELLED_TOGETHER


def test_flag_defaults_are_none_so_config_defaults_rule():
    """A flag's own default would hide the config's (and the budget rule's) default."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    train = sub.choices["train"]
    for action in train._actions:
        if action.dest in config_fields():
            assert action.default is None, action.dest

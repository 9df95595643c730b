"""The run folder's small files through their owner, runfolder.py: each one written by RunFolder
reads back as it was (checkpoints: test_checkpoint.py; metrics.jsonl: test_metrics.py)."""

from pathlib import Path

from nextchar.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from nextchar.runfolder import RunFolder
from nextchar.vocab import Vocab


def test_setup_files_round_trip(tmp_path):
    folder = RunFolder(tmp_path)
    config = RunConfig(DataConfig(), ModelConfig(vocab_size=3, hidden=8), TrainConfig(steps=5))
    folder.write_setup(config, Vocab(["a", "b", "\u2603"]), "nextchar train tiny.txt --steps 5")
    assert folder.read_config() == config and folder.read_vocab() == Vocab(["a", "b", "\u2603"])
    assert folder.read_command() == "nextchar train tiny.txt --steps 5"
    changed = RunConfig(config.data, config.model, TrainConfig(steps=9))
    folder.write_config(changed)  # a resume that changed a training option
    assert folder.read_config() == changed
    folder.write_machine({"machine": {"cpu": "x"}, "train_precision": {"value": "fp32"}})
    assert folder.read_machine()["train_precision"] == {"value": "fp32"}


def test_source_names_data_outside_the_run_only(tmp_path):
    folder = RunFolder(tmp_path / "run")
    folder.create()
    folder.write_source("f1")
    assert folder.source() == {"fingerprint": "f1"}
    folder.write_source("f2", tmp_path / "prepared" / ".." / "prepared")
    assert folder.source() == {"fingerprint": "f2", "data": str((tmp_path / "prepared").resolve())}
    assert Path(folder.source()["data"]).is_absolute()


def test_missing_small_files_read_as_nothing(tmp_path):
    folder = RunFolder(tmp_path)
    assert folder.read_command() == "" and folder.source() == {} and folder.read_machine() == {}

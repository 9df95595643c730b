"""atomic.py: the one temporary-name convention (.NAME.tmp-PID) that the run folder, prepared data
and the autotune cache share, and the write that renames such a file into place."""

import os

from nextchar.atomic import atomic_write, is_temp, remove_temps, temp_path


def test_temp_path_is_beside_its_target_and_recognised(tmp_path):
    staged = temp_path(tmp_path / "latest.safetensors")
    assert staged == tmp_path / f".latest.safetensors.tmp-{os.getpid()}"
    assert is_temp(staged.name)
    assert is_temp(".data.tmp-77") and is_temp(".build.tmp-1")  # another process's, a folder's
    for name in (
        "latest.safetensors",
        ".nextchar.lock",
        "notes.tmp-3",
        ".tmp-3",
        ".data.tmp-",
        ".data.tmp-12x",
        "data",
    ):
        assert not is_temp(name), name


def test_remove_temps_clears_staged_files_and_folders_only(tmp_path):
    keep = ["config.json", ".nextchar.lock", "notes.tmp-3"]
    for name in keep:
        (tmp_path / name).write_text("x")
    (tmp_path / ".metrics.jsonl.tmp-5").write_text('{"kind": "tr')
    temp_path(tmp_path / "data").mkdir()
    (temp_path(tmp_path / "data") / "tokens.bin").write_bytes(b"\x01")
    removed = remove_temps(tmp_path)
    assert [p.name for p in removed] == sorted([".metrics.jsonl.tmp-5", f".data.tmp-{os.getpid()}"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)


def test_atomic_write_replaces_the_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "config.json"
    atomic_write(target, "old\n")
    atomic_write(target, b"new\n")
    assert target.read_bytes() == b"new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]

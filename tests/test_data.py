import json

import numpy as np
import pytest

from nextchar.config import DataConfig
from nextchar.data import IGNORE, Streams, load_prepared, prepare, split_bounds
from nextchar.errors import UserError


def _targets_seen(streams: Streams) -> np.ndarray:
    """How often each target position (index into tokens, 1..N-1) appears in one epoch."""
    counts = np.zeros(len(streams.tokens), dtype=int)
    positions = np.arange(len(streams.tokens))
    ref = Streams(positions, streams.batch_size, streams.seq_len)  # tokens = their own positions
    for w in range(len(ref)):
        x, y, valid = ref.window(w)
        mask = y != IGNORE
        assert valid == mask.sum()
        assert np.array_equal(y[mask], x[mask] + 1)  # y is the token after x
        np.add.at(counts, y[mask], 1)
    return counts


@pytest.mark.parametrize(
    "n,batch,seq", [(2, 1, 1), (100, 3, 7), (101, 4, 5), (1000, 7, 64), (65, 64, 1)]
)
def test_every_target_exactly_once(n, batch, seq):
    counts = _targets_seen(Streams(np.zeros(n, dtype=np.uint8), batch, seq))
    assert counts[0] == 0 and np.all(counts[1:] == 1)


def test_streams_are_contiguous_and_carry_over():
    tokens = np.arange(1000)
    streams = Streams(tokens, batch_size=4, seq_len=10)
    x0, _, _ = streams.window(0)
    x1, _, _ = streams.window(1)
    assert np.array_equal(x1[:, 0], x0[:, -1] + 1)  # row b of window 1 continues row b of window 0
    assert np.array_equal(x0[:, 0], streams.starts)


def test_rows_partition_the_global_batch():
    tokens = np.arange(500)
    whole = Streams(tokens, 4, 8)
    halves = [Streams(tokens, 4, 8, rows=slice(0, 2)), Streams(tokens, 4, 8, rows=slice(2, 4))]
    for w in range(len(whole)):
        x, y, valid = whole.window(w)
        parts = [h.window(w) for h in halves]
        assert np.array_equal(x, np.concatenate([p[0] for p in parts]))
        assert np.array_equal(y, np.concatenate([p[1] for p in parts]))
        assert all(p[2] == valid for p in parts)  # the global count, on every rank


def test_split_bounds():
    splits = split_bounds(1000, 0.05, 0.05)
    assert splits == {"train": (0, 900), "val": (900, 950), "test": (950, 1000)}


def test_prepare_round_trip(tmp_path):
    a = tmp_path / "a.txt"
    b = tmp_path / "sub" / "b.txt"
    b.parent.mkdir()
    a.write_text("hello wörld\n", encoding="utf-8")
    b.write_text("日本語 😀\r\n", encoding="utf-8")
    out = prepare([str(tmp_path)], tmp_path / "data", DataConfig(val_frac=0.1, test_frac=0.1))
    data = load_prepared(out)
    text = "hello wörld\n日本語 😀\r\n"
    assert data.vocab.symbols == sorted(set(text))
    assert data.vocab.decode(data.tokens) == text
    assert data.tokens.dtype == np.uint8
    meta = json.loads((out / "data.json").read_text())
    assert [s["chars"] for s in meta["sources"]] == [12, 7]


def test_large_vocab_uses_wider_ids(tmp_path):
    text = "".join(chr(0x4E00 + i) for i in range(3000)) * 2
    path = tmp_path / "cjk.txt"
    path.write_text(text, encoding="utf-8")
    data = load_prepared(prepare([str(path)], tmp_path / "data"))
    assert data.tokens.dtype == np.uint16 and len(data.vocab) == 3000
    assert data.vocab.decode(data.tokens[:50]) == text[:50]


def test_small_chunks_give_the_same_tokens(tmp_path, monkeypatch):
    """Chunk boundaries may split a multi-byte character; the ids must not change."""
    text = "añ😀日" * 500
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    whole = np.array(load_prepared(prepare([str(path)], tmp_path / "d1")).tokens)
    monkeypatch.setattr("nextchar.corpus.CHUNK_BYTES", 7)
    import nextchar.corpus as corpus

    chunks = list(corpus.iter_chunks(path, chunk_bytes=7))
    assert "".join(chunks) == text
    monkeypatch.setattr(
        "nextchar.encode.iter_chunks", lambda p, e, r: corpus.iter_chunks(p, e, r, chunk_bytes=7)
    )
    small = np.array(load_prepared(prepare([str(path)], tmp_path / "d2")).tokens)
    assert np.array_equal(whole, small)


def test_bom_is_not_text(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeffabcab".encode("utf-8"))
    data = load_prepared(prepare([str(path)], tmp_path / "d"))
    assert data.vocab.decode(data.tokens) == "abcab"


def test_single_symbol_refused(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("aaaa")
    with pytest.raises(UserError, match="one distinct character"):
        prepare([str(path)], tmp_path / "d")


def test_a_prepared_split_is_the_runs_split_unless_named(tmp_path):
    """`prepare --val-frac/--test-frac` decide the split of every run trained on the folder (and so
    what eval, report and resume score); a fraction named at `train` overrides it."""
    import json

    from nextchar.runfolder import RunFolder
    from processes import TINY_TEXT, TINY_TRAIN_FLAGS, cli

    (tmp_path / "t.txt").write_text(TINY_TEXT)
    assert (
        cli(
            "prepare",
            tmp_path / "t.txt",
            "--out",
            tmp_path / "prep",
            "--val-frac",
            "0.2",
            "--test-frac",
            "0.1",
        )[0]
        == 0
    )
    assert cli("train", tmp_path / "prep", "--out", tmp_path / "run", *TINY_TRAIN_FLAGS)[0] == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["data"]["val_frac"] == pytest.approx(0.2, abs=1e-3)
    assert config["data"]["test_frac"] == pytest.approx(0.1, abs=1e-3)
    folder = RunFolder(tmp_path / "run")
    data = folder.split_data(folder.read_config())
    prepared = json.loads((tmp_path / "prep" / "data.json").read_text())["splits"]
    assert {k: list(v) for k, v in data.splits.items()} == {k: list(v) for k, v in prepared.items()}
    assert (
        cli(
            "train",
            tmp_path / "prep",
            "--out",
            tmp_path / "run2",
            "--val-frac",
            "0.05",
            *TINY_TRAIN_FLAGS,
        )[0]
        == 0
    )
    config = json.loads((tmp_path / "run2" / "config.json").read_text())
    assert config["data"]["val_frac"] == 0.05

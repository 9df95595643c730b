"""Corpora larger than memory: preparation that streams in bounded chunks (with a UTF-8 path that
decodes only the non-ASCII bytes), vocabularies of thousands of symbols, and training that reads a
memory-mapped corpus without ever loading it. Speed is measured in bench/prepare_bench.py."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import nextchar
import nextchar.corpus as corpus
import nextchar.encode as encode
from nextchar.config import DataConfig
from nextchar.data import load_prepared, prepare, split_bounds
from nextchar.errors import UserError
from nextchar.vocab import Vocab
from tiny import TINY

MIXED = (
    "plain ASCII line\r\n",
    "naïve café — déjà vu\n",
    "日本語のテキスト、中文字符\n",
    "emoji 😀🎉 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢\n",
    "a zero width no-break space \ufeff inside\n",
    "\tτέλος\n",
)


def mixed_text(lines: int = 400) -> str:
    return "".join(MIXED[i * 7 % len(MIXED)] for i in range(lines))


def prepared_tokens(
    path, out, chunk_bytes: int, monkeypatch, fast: bool = True
) -> tuple[list, np.ndarray]:
    """Prepare `path` with both passes reading `chunk_bytes` at a time; (symbols, tokens)."""
    monkeypatch.setattr(encode, "iter_bytes", lambda p: corpus.iter_bytes(p, chunk_bytes))
    monkeypatch.setattr(
        encode, "iter_chunks", lambda p, e, r: corpus.iter_chunks(p, e, r, chunk_bytes)
    )
    monkeypatch.setattr(encode, "is_utf8", lambda encoding: fast)
    loaded = load_prepared(prepare([str(path)], out))
    return loaded.vocab.symbols, np.array(loaded.tokens)


@pytest.mark.parametrize("chunk_bytes", [1, 2, 3, 5, 64, 1 << 20])
def test_utf8_fast_path_equals_plain_decoding(tmp_path, monkeypatch, chunk_bytes):
    """Chunks that cut multi-byte characters, a leading byte-order mark (not text), U+FEFF later
    on (text), ASCII-only and mixed chunks: the fast path must give the ids plain decoding gives."""
    text = mixed_text()
    path = tmp_path / "mixed.txt"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    symbols, tokens = prepared_tokens(path, tmp_path / "fast", chunk_bytes, monkeypatch, fast=True)
    assert symbols == sorted(set(text))
    assert "".join(symbols[i] for i in tokens) == text
    reference = prepared_tokens(path, tmp_path / "plain", chunk_bytes, monkeypatch, fast=False)
    assert reference[0] == symbols and np.array_equal(reference[1], tokens)


def test_bad_utf8_hidden_from_the_first_pass_is_caught_by_the_second(tmp_path):
    """The first pass decodes only the bytes >= 0x80, so a lead byte cut off by an ASCII byte
    ('\\xc3' 'A' '\\xa9') looks whole to it; the strict second pass names the offset."""
    path = tmp_path / "bad.txt"
    path.write_bytes(b"good text\n" * 10 + b"\xc3A\xa9 more\n")
    with pytest.raises(UserError, match="bad.txt is not valid utf-8: byte 0xc3 at offset 100 "):
        prepare([str(path)], tmp_path / "data")
    assert not (tmp_path / "data").exists()


def test_ascii_ids_past_a_byte_take_the_general_path(tmp_path):
    """A given vocab need not be sorted: with ASCII ids >= 256 the byte-translation path is off."""
    symbols = [chr(0x4E00 + i) for i in range(300)] + list("ab \n")
    text = "ab \n" + "".join(symbols[:300]) + "ba\n"
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    tokens = load_prepared(prepare([str(path)], tmp_path / "d", vocab=Vocab(symbols))).tokens
    assert tokens.dtype == np.uint16
    assert "".join(symbols[i] for i in tokens) == text


@pytest.mark.parametrize("size, dtype", [(256, np.uint8), (65536, np.uint16)])
def test_vocab_filling_the_id_type(tmp_path, size, dtype):
    """The code point -> id table needs one value more than the ids (for 'unknown'): at 256 and
    65536 symbols it is wider than the ids, and unknown characters are still found."""
    points = [p for p in range(0x21, 0x21 + size + 2048) if not 0xD800 <= p < 0xE000][:size]
    symbols = [chr(p) for p in points]
    path = tmp_path / "all.txt"
    path.write_text("".join(symbols[::-1]), encoding="utf-8")
    vocab = Vocab(symbols)
    tokens = load_prepared(prepare([str(path)], tmp_path / "d", vocab=vocab)).tokens
    assert tokens.dtype == dtype and np.array_equal(tokens, np.arange(size)[::-1])
    path.write_text("".join(symbols) + " ", encoding="utf-8")  # U+0020: just below the first symbol
    with pytest.raises(UserError, match=r"not in the vocabulary: ' ' \(U\+0020\)"):
        prepare([str(path)], tmp_path / "d2", vocab=vocab)


@pytest.mark.slow
def test_large_vocabulary_prepares_and_trains(tmp_path):
    """Several thousand CJK symbols (uint16 ids) and astral emoji: the model gets the whole
    vocabulary, learns, and samples only its symbols."""
    rng = np.random.default_rng(0)
    rare = [chr(0x9000 + int(p)) for p in rng.permutation(4000)]  # each once, after a set phrase
    text = "".join(f"日本語のテキスト{r}{'😀' if i % 3 else '🎉'}\n" for i, r in enumerate(rare))
    path = tmp_path / "cjk.txt"
    path.write_text(text, encoding="utf-8")
    folder = prepare([str(path)], tmp_path / "data")
    prepared = load_prepared(folder)
    assert prepared.tokens.dtype == np.uint16 and len(prepared.vocab) == len(set(text)) == 4011
    run = nextchar.train(
        str(folder),
        out=tmp_path / "run",
        steps=60,
        **dict(TINY, lr=3e-2, batch_size=8, seq_len=32, log_every=10),
    )
    losses = [
        r["loss"]
        for r in map(json.loads, (run.path / "metrics.jsonl").read_text().splitlines())
        if r["kind"] == "train"
    ]
    assert (
        losses[-1] < 2.0 < 5.0 < losses[0]
    )  # from ln(4011) = 8.3 to near the ~0.8 a rare symbol a line costs
    model = nextchar.load(run.path)
    assert model.config.model.vocab_size == 4011
    sample = model.generate("日", 40, seed=0)
    assert set(sample) <= set(prepared.vocab.symbols)


def _child_peak_rss_mib(args: list[str], cwd) -> tuple[float, float]:
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "nextchar", *args],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, proc.stderr.read().decode()
    return usage.ru_maxrss / 1024, time.perf_counter() - started


def test_prepare_memory_does_not_grow_with_the_corpus(tmp_path):
    block = mixed_text(2000).encode("utf-8")  # about 70 KB
    for name, blocks in (("small", 30), ("big", 600)):  # about 2 MB and 40 MB
        with open(tmp_path / f"{name}.txt", "wb") as f:
            for _ in range(blocks):
                f.write(block)
    small, _ = _child_peak_rss_mib(["prepare", "small.txt", "--out", "small"], tmp_path)
    big, _ = _child_peak_rss_mib(["prepare", "big.txt", "--out", "big"], tmp_path)
    # 40 MB of this text decodes to 160 MB of UCS-4: holding it whole would show
    assert big < small + 30, (small, big)
    assert (
        load_prepared(tmp_path / "big").tokens.shape[0]
        == 20 * load_prepared(tmp_path / "small").tokens.shape[0]
    )


@pytest.mark.slow
def test_training_on_a_huge_memory_mapped_corpus_never_loads_it(tmp_path):
    """3 GB of ids (a sparse file: zeros after a real beginning) trains its first steps in a
    fraction of that memory and time, with --eval-chars capping the evaluations."""
    path = tmp_path / "t.txt"
    path.write_text(mixed_text(2000), encoding="utf-8")
    folder = prepare([str(path)], tmp_path / "data", DataConfig())
    length = 3_000_000_000
    with open(folder / "tokens.bin", "r+b") as f:
        f.truncate(length)  # uint8 ids: the rest reads as id 0
    meta = json.loads((folder / "data.json").read_text())
    meta.update(length=length, splits=split_bounds(length, 0.05, 0.05))
    (folder / "data.json").write_text(json.dumps(meta))
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    rss, seconds = _child_peak_rss_mib(
        [
            "train",
            "data",
            "--out",
            "run",
            *flags,
            "--steps",
            "6",
            "--eval-chars",
            "2000",
            "--device",
            "cpu",
            "--quiet",
        ],
        tmp_path,
    )
    # the memory shows the corpus was not loaded; the time only catches reading it all on a slow
    # disk, with a margin for a loaded two-core machine (about 10 s here when it is idle)
    assert rss < 1024 and seconds < 120, (rss, seconds)
    final = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert final["kind"] == "final" and final["step"] == 6 and final["val"]["chars"] == 1999

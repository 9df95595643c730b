"""Properties over arbitrary input (hypothesis): text survives vocab and data preparation, the
streams cover every target once per epoch, and sampling emits only vocabulary characters."""

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from nextchar.config import DataConfig, ModelConfig, SampleConfig
from nextchar.corpus import iter_chunks
from nextchar.data import IGNORE, Streams, load_prepared, prepare
from nextchar.errors import UserError
from nextchar.model import CharRNN
from nextchar.sample import Sampler
from nextchar.vocab import Vocab

# any code point but lone surrogates (which no UTF-8 file can hold): astral planes, combining
# marks, controls, CR and LF
CHARS = st.characters(exclude_categories=("Cs",))
TEXTS = st.text(CHARS, min_size=1, max_size=200)
TRICKY = [
    "e\u0301\u0301 \U0001f600\U0001f1eb\U0001f1f7",
    "a\r\nb\rc\n",
    "\ufeff\x00\U0010ffff\u200d",
    "\u0915\u094d\u0937 \ud7ff\ue000",
]


@given(TEXTS)
@example(TRICKY[0])
@example(TRICKY[1])
@example(TRICKY[2])
def test_vocab_round_trip(text):
    vocab = Vocab.from_text(text)
    ids = vocab.encode(text)
    assert len(ids) == len(text) and all(0 <= i < len(vocab) for i in ids)
    assert vocab.decode(ids) == text
    assert Vocab.from_json(vocab.to_json()) == vocab
    assert vocab.symbols == sorted(set(text))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(TEXTS.filter(lambda t: len(set(t)) >= 2), st.sampled_from([1, 2, 3, 5, 64]))
@example(TRICKY[0], 1)
@example(TRICKY[1], 2)
@example(TRICKY[3], 3)
def test_text_survives_preparation_and_chunked_decoding(text, chunk_bytes):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "text.txt"
        path.write_bytes(text.encode("utf-8"))  # bytes as they are: CRLF stays CRLF
        expected = text[1:] if text.startswith("\ufeff") else text  # a leading BOM is no text
        assert "".join(iter_chunks(path, chunk_bytes=chunk_bytes)) == expected
        if len(set(expected)) < 2:
            return
        data = load_prepared(
            prepare([path], Path(tmp) / "data", DataConfig(val_frac=0, test_frac=0))
        )
        assert data.vocab == Vocab.from_text(expected)
        assert data.vocab.decode(np.asarray(data.tokens)) == expected
        assert len(data.tokens) == len(expected)


@settings(max_examples=300, deadline=None)
@given(st.integers(2, 400), st.integers(1, 40), st.integers(1, 50), st.integers(1, 4))
def test_streams_cover_each_target_once_per_epoch(length, batch_size, seq_len, world):
    tokens = np.arange(length, dtype=np.int64)  # token i sits at position i
    if batch_size > length - 1:
        with pytest.raises(UserError, match="--batch-size"):
            Streams(tokens, batch_size, seq_len)
        return
    streams = Streams(tokens, batch_size, seq_len)
    targets = []
    previous_last = None
    for w in range(len(streams)):
        x, y, valid = streams.window(w)
        assert x.shape == y.shape and x.shape[0] == batch_size and 1 <= x.shape[1] <= seq_len
        inside = y != IGNORE
        assert valid == inside.sum()
        assert np.array_equal(y[inside], x[inside] + 1)  # y[b, t] is the token after x[b, t]
        assert inside[:, 0].any()  # no window is all padding
        # contiguous streams: each row goes on where it left off (the state carries over)
        if previous_last is not None:
            carried = previous_last != IGNORE
            assert np.array_equal(x[carried, 0], previous_last[carried])
        previous_last = y[:, -1]
        targets.extend(y[inside].tolist())
    assert sorted(targets) == list(range(1, length))  # every target exactly once

    # a data-parallel rank owns a slice of the rows; together they read the same global batch
    if batch_size % world == 0:
        per = batch_size // world
        for w in range(len(streams)):
            x, y, valid = streams.window(w)
            parts = [
                Streams(tokens, batch_size, seq_len, rows=slice(r * per, (r + 1) * per)).window(w)
                for r in range(world)
            ]
            assert np.array_equal(np.concatenate([p[0] for p in parts]), x)
            assert np.array_equal(np.concatenate([p[1] for p in parts]), y)
            assert all(p[2] == valid for p in parts)  # valid counts the global batch


VOCAB = Vocab(list("\nab\u00e9 \U0001f600\u0301xyz"))


@pytest.fixture(scope="module")
def samplers():
    """A tiny random CharRNN, and one with very peaked outputs."""
    torch.manual_seed(0)
    out = []
    for cell, scale in (("lstm", 1.0), ("gru", 1e4)):
        model = CharRNN(ModelConfig(vocab_size=len(VOCAB), cell=cell, embed=4, hidden=8, layers=2))
        with torch.no_grad():
            model.head.weight.mul_(scale)
        out.append(Sampler(model, VOCAB))
    return out


@settings(max_examples=80, deadline=None)
@given(
    temperature=st.floats(min_value=0, max_value=1e300, exclude_min=True),
    top_k=st.none() | st.integers(1, len(VOCAB) + 3),
    top_p=st.floats(min_value=0, max_value=1, exclude_min=True),
    greedy=st.booleans(),
    num_samples=st.integers(1, 3),
    seed=st.integers(0, 2**32 - 1),
    prime=st.text(st.sampled_from(VOCAB.symbols), max_size=4),
    which=st.integers(0, 1),
)
@example(
    temperature=5e-324,
    top_k=1,
    top_p=5e-324,
    greedy=False,
    num_samples=2,
    seed=0,
    prime="",
    which=1,
)
def test_sampling_emits_only_vocabulary_characters(
    samplers, temperature, top_k, top_p, greedy, num_samples, seed, prime, which
):
    config = SampleConfig(
        length=12,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        greedy=greedy,
        num_samples=num_samples,
        seed=seed,
        prime=prime,
    )
    texts = samplers[which].generate(config)
    assert len(texts) == num_samples
    for text in texts:
        assert set(text) <= set(VOCAB.symbols)
        if prime:
            assert text.startswith(prime) and len(text) == len(prime) + 12
        else:  # with no prime, the model starts after a line break (not shown)
            assert len(text) == 12

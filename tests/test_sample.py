import pytest
import torch

from nextchar.config import ModelConfig, SampleConfig
from nextchar.errors import UserError
from nextchar.model import CharRNN
from nextchar.sample import Sampler, Stream, check_prime, draw, filter_logits, sample_precision
from nextchar.stepping import StepModel
from nextchar.vocab import Vocab


@pytest.fixture
def sampler():
    torch.manual_seed(0)
    vocab = Vocab(list("\nabcdefgh "))
    model = CharRNN(ModelConfig(vocab_size=len(vocab), cell="lstm", embed=6, hidden=16, layers=2))
    return Sampler(model, vocab, "fp32")  # exact: compared with the module below


def test_same_seed_same_text(sampler):
    config = SampleConfig(length=80, seed=7, temperature=0.9, prime="abc")
    first = sampler.generate(config)
    assert sampler.generate(config) == first
    assert sampler.generate(SampleConfig(length=80, seed=8, prime="abc")) != first
    assert first[0].startswith("abc") and len(first[0]) == 83


def test_greedy_equals_independent_argmax_decoding(sampler):
    model, vocab = sampler.model, sampler.vocab
    text = sampler.generate(SampleConfig(length=40, greedy=True, prime="ab"))[0]
    ids = vocab.encode("ab")
    with torch.no_grad():  # recompute the whole prefix every step: slow but obviously right
        for _ in range(40):
            logits, _ = model(torch.tensor([ids]))
            ids.append(int(logits[0, -1].argmax()))
    assert text == vocab.decode(ids)


def test_streaming_callback_sees_every_char(sampler):
    seen = []
    config = SampleConfig(length=30, seed=1)
    kept = sampler.generate(config, on_text=lambda row, t: seen.append(t))
    assert kept == [""]  # streamed, not kept: memory does not grow with --length
    assert "".join(seen) == sampler.generate(config)[0]


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_a_seed_fixes_each_sample_whatever_else_is_asked(precision):
    """Sample i of a seeded request is the same text alone or among others, and a shorter sample
    is a prefix of a longer one (each sample draws from its own generator)."""
    torch.manual_seed(0)
    vocab = Vocab(list("\nabcdefgh "))
    model = CharRNN(ModelConfig(vocab_size=len(vocab), cell="lstm", embed=8, hidden=32, layers=2))
    sampler = Sampler(model, vocab, precision)
    four = sampler.generate(SampleConfig(length=120, seed=5, num_samples=4, prime="ab"))
    assert len(set(four)) == 4
    assert sampler.generate(SampleConfig(length=120, seed=5, prime="ab")) == four[:1]
    assert sampler.generate(SampleConfig(length=120, seed=5, num_samples=2, prime="ab")) == four[:2]
    assert sampler.generate(SampleConfig(length=60, seed=5, num_samples=3, prime="ab")) == [
        t[:62] for t in four[:3]
    ]
    assert sampler.generate(SampleConfig(length=120, seed=6, prime="ab"))[0] != four[0]


def test_a_stream_told_its_steps_draws_the_same_noise_in_smaller_blocks(monkeypatch):
    """Drawing only the steps a sample needs (and one at a time past them) changes no draw:
    the generator's numbers do not depend on the block size."""
    monkeypatch.setattr(Stream, "NOISE_BLOCK", 50 * 7)
    whole, told = Stream(9, 7), Stream(9, 7, steps=30)
    first = told.rest()
    assert first.shape == (30, 7)
    assert torch.equal(first, whole.rest()[:30])
    told.skip(30)
    whole.skip(30)
    past = [(told.noise(), whole.noise()) for _ in range(40)]  # across whole's next block
    assert all(torch.equal(a, b) for a, b in past)


def test_a_long_prime_is_run_in_chunks_exactly(sampler, monkeypatch):
    """The prime runs through the module a chunk at a time (memory bounded by the model), and the
    state it leaves equals one pass over the whole prime."""
    import nextchar.sample as sample_module

    prime = "abc defgh\n" * 50  # 500 characters
    whole = sampler.generate(SampleConfig(length=40, greedy=True, prime=prime))
    monkeypatch.setattr(sample_module, "PRIME_CHUNK_VALUES", 1)  # the smallest chunk: 64 chars
    calls = []
    original = sampler.model.rnn.forward
    monkeypatch.setattr(
        sampler.model.rnn, "forward", lambda *a, **k: calls.append(a[0].shape) or original(*a, **k)
    )
    chunked = sampler.generate(SampleConfig(length=40, greedy=True, prime=prime))
    assert chunked == whole and len(calls) == 8 and max(shape[1] for shape in calls) == 64


def test_num_samples_rows_differ(sampler):
    texts = sampler.generate(SampleConfig(length=50, seed=3, num_samples=4))
    assert len(texts) == 4 and len(set(texts)) > 1


def test_filter_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = filter_logits(logits, 1.0, 2, 1.0).isfinite()
    assert kept.tolist() == [[True, True, False, False]]
    kept = filter_logits(logits, 1.0, 0, 0.8).isfinite()  # 0.5 + 0.3 reaches 0.8
    assert kept.tolist() == [[True, True, False, False]]
    kept = filter_logits(logits, 1.0, 0, 0.81).isfinite()
    assert kept.tolist() == [[True, True, True, False]]
    kept = filter_logits(logits, 1.0, 0, 0.01).isfinite()
    assert kept.tolist() == [[True, False, False, False]]


def test_unknown_prime(sampler):
    with pytest.raises(UserError, match="'z'"):
        check_prime(sampler.vocab, "abz", "error")
    check_prime(sampler.vocab, "abz", "skip")
    text = sampler.generate(SampleConfig(length=5, prime="abz", unknown="skip", seed=0))[0]
    assert text.startswith("ab") and len(text) == 7


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn", "rnn-relu"])
@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_reduced_precision_steps_stay_close_to_the_module(cell, precision):
    """bf16 and int8 weights change the logits by rounding only: compared with plain torch.nn."""
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=40, cell=cell, embed=16, hidden=64, layers=2)).eval()
    idx = torch.randint(0, 40, (3, 20))
    with torch.no_grad():
        logits, _ = model(idx)
        stepper = StepModel(model, precision)
        state = stepper.from_module_hidden(model.init_hidden(3))
        steps = [stepper.step(idx[:, t], state)[0] for t in range(20)]
    difference = (torch.stack(steps, 1) - logits).abs().max().item()
    assert difference < 0.02, difference
    assert difference > 0  # the weights really were rounded


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_rows_join_and_leave_a_stepped_batch(cell):
    """join (streams joining a batch) and select (streams leaving) carry each row's state: the
    rows then step as they step apart (fp32; within rounding, as the products run over other
    rows)."""
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=40, cell=cell, embed=16, hidden=32, layers=2)).eval()
    stepper = StepModel(model, "fp32")
    a, b = model.init_hidden(2), model.init_hidden(3)
    a = tuple(torch.randn_like(t) for t in a) if cell == "lstm" else torch.randn_like(a)
    b = tuple(torch.randn_like(t) for t in b) if cell == "lstm" else torch.randn_like(b)
    idx = torch.randint(0, 40, (5,))
    with torch.no_grad():
        apart = torch.cat(
            [
                stepper.step(idx[:2], stepper.from_module_hidden(a))[0],
                stepper.step(idx[2:], stepper.from_module_hidden(b))[0],
            ]
        )
        joined = stepper.join([stepper.from_module_hidden(a), stepper.from_module_hidden(b)])
        assert torch.allclose(stepper.step(idx, joined)[0], apart, atol=1e-5)
        rows = torch.tensor([4, 1])  # what stepped above, then one step more for two rows
        kept = stepper.select(joined, rows)
        again = stepper.step(idx[rows], kept)[0]
        whole = stepper.step(idx, joined)[0][rows]
    assert torch.allclose(again, whole, atol=1e-5)


def test_auto_precision_by_batch_and_shape(sampler, monkeypatch, fresh_cache):
    """auto takes the fastest timed weight format for the batch size; int8 only where the int8
    kernel takes the shapes; a named format is used as it is, without timing."""
    import nextchar.sample as sample

    model = sampler.model
    timed = []

    def fake(model, batch, candidates, budget_s=0.0):
        timed.append((batch, candidates))
        return {"fp32": 1.0, "bf16": 0.5 if batch >= 8 else 2.0, "int8": 0.4 if batch < 8 else 3.0}

    monkeypatch.setattr(
        sample,
        "sample_step_seconds",
        lambda m, b, c: {k: v for k, v in fake(m, b, c).items() if k in c},
    )
    monkeypatch.setattr(sample.autotune, "bf16_possible", lambda device: True)
    assert sample_precision("auto", model, 1).value == "int8"
    assert sample_precision("auto", model, 8).value == "bf16"
    assert sample_precision("auto", model, 8).how == "cached"
    assert sample_precision("fp32", model, 1).value == "fp32"
    odd = CharRNN(ModelConfig(vocab_size=5, cell="lstm", embed=4, hidden=12, layers=1))
    assert sample_precision("auto", odd, 1).value == "fp32"  # no int8 candidate; bf16 slower
    # timed once per shape and batch; the repeated question came from the cache
    assert timed == [
        (1, ("fp32", "bf16", "int8")),
        (8, ("fp32", "bf16", "int8")),
        (1, ("fp32", "bf16")),
    ]
    with pytest.raises(UserError, match="multiple of 16"):
        sample_precision("int8", odd, 1)
    with pytest.raises(UserError, match="--weights"):
        Sampler(model, sampler.vocab, "fp8")


@pytest.mark.parametrize("precision", ["auto", "bf16", "int8"])
def test_every_precision_samples_reproducibly(sampler, precision):
    for n in (1, 8):
        config = SampleConfig(length=40, seed=5, num_samples=n, temperature=0.8)
        fast = Sampler(sampler.model, sampler.vocab, precision)
        texts = fast.generate(config)
        assert texts == fast.generate(config) and len(texts) == n
        assert all(set(t) <= set(sampler.vocab.symbols) for t in texts)


@pytest.mark.parametrize(
    "temperature, top_k, top_p",
    [(1.0, None, 1.0), (0.5, None, 1.0), (2.0, 3, 1.0), (1.0, None, 0.7), (1e-6, None, 1.0)],
)
def test_gumbel_max_draws_follow_the_softmax(temperature, top_k, top_p):
    """Frequencies of many independent draws match softmax(logits / T) on the kept set."""
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    n = 200_000
    generator = torch.Generator().manual_seed(0)
    gumbel = -torch.empty(n, 5).exponential_(generator=generator).log()
    ids = draw(logits.expand(n, 5), gumbel, temperature, top_k, top_p)
    observed = torch.bincount(ids, minlength=5).double() / n
    expected = filter_logits(logits[None], temperature, top_k, top_p).softmax(-1)[0]
    assert torch.allclose(observed, expected, atol=0.005), (observed, expected)

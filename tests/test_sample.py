import pytest
import torch

from nextchar.config import ModelConfig, SampleConfig
from nextchar.errors import UserError
from nextchar.model import CharRNN
from nextchar.sample import Sampler, check_prime, filter_logits
from nextchar.vocab import Vocab


@pytest.fixture
def sampler():
    torch.manual_seed(0)
    vocab = Vocab(list("\nabcdefgh "))
    model = CharRNN(ModelConfig(vocab_size=len(vocab), cell="lstm", embed=6, hidden=16, layers=2))
    return Sampler(model, vocab)


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
    text = sampler.generate(SampleConfig(length=30, seed=1), on_text=lambda row, t: seen.append(t))[0]
    assert "".join(seen) == text


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


def test_batches_of_samples_in_bf16_stay_close_to_fp32(sampler):
    """With --precision bf16, eight or more parallel samples step in bf16; one sample stays fp32."""
    import torch

    bf16 = Sampler(sampler.model, sampler.vocab, precision="bf16")
    assert bf16.stepper(1).dtype == torch.float32
    assert bf16.stepper(8).dtype == torch.bfloat16
    fp32_step, bf16_step = sampler.stepper(8), bf16.stepper(8)
    idx = torch.arange(8) % len(sampler.vocab)
    state = sampler.model.init_hidden(8)
    with torch.no_grad():
        exact, _ = fp32_step.step(idx, fp32_step.from_module_hidden(state))
        rounded, _ = bf16_step.step(idx, bf16_step.from_module_hidden(state))
    assert torch.allclose(exact, rounded.float(), atol=0.05)
    config = SampleConfig(length=40, seed=5, num_samples=8)
    texts = bf16.generate(config)
    assert texts == bf16.generate(config) and all(set(t) <= set(sampler.vocab.symbols) for t in texts)

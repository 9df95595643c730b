import pytest
import torch

from nextchar.errors import UserError
from nextchar.vocab import Vocab


def test_one_hot_lesson_shapes():
    vocab = Vocab(list("helo"))
    onehot = vocab.one_hot("hello")
    assert onehot.shape == (5, 4)
    assert torch.equal(onehot, torch.eye(4)[[0, 1, 2, 2, 3]])
    assert len(Vocab.from_text("hihello", order="first")) == 5


def test_orders():
    assert Vocab.from_text("hihello", order="first").symbols == list("hielo")
    assert Vocab.from_text("hihello").symbols == sorted("hielo")


def test_unicode_is_per_code_point():
    text = "naïve 😀 日本語 e\u0301\r\n"
    vocab = Vocab.from_text(text)
    assert vocab.decode(vocab.encode(text)) == text
    assert "😀" in vocab and len(vocab) == len(set(text))


def test_unknown_policy():
    vocab = Vocab(list("abc"))
    with pytest.raises(UserError, match="'z'"):
        vocab.encode("abz")
    assert vocab.encode("abz", unknown="skip") == [0, 1]
    assert vocab.unknown_chars("zaz😀") == ["z", "😀"]


def test_json_round_trip():
    vocab = Vocab.from_text("x\ny\t😀\u0301")
    assert Vocab.from_json(vocab.to_json()) == vocab


@pytest.mark.parametrize("symbols", [[], ["ab"], ["a", "a"]])
def test_bad_symbols(symbols):
    with pytest.raises(UserError):
        Vocab(symbols)

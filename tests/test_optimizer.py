"""The optimizer nextchar builds (fused where torch has the kernel) against torch's default AdamW,
the fallback where the fused kernel is missing, and a resume that keeps the live implementation."""

from __future__ import annotations

import copy

import pytest
import torch

from nextchar import optimizer as nopt
from nextchar.config import ModelConfig, TrainConfig
from nextchar.model import CharRNN

CONFIG = ModelConfig(vocab_size=11, hidden=16, layers=2, embed=8)


def _gradients(model: torch.nn.Module, step: int) -> None:
    generator = torch.Generator().manual_seed(step)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=generator)


def _reference(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """torch's default (per-tensor) AdamW with nextchar's groups: decay on the matrices only."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and not n.startswith("embed")]
    rest = [p for p in model.parameters() if all(p is not q for q in decay)]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": rest}]
    return torch.optim.AdamW(
        groups, lr=config.lr, betas=(0.9, 0.99), weight_decay=0.0, foreach=False, fused=False
    )


class NoFusedAdamW(torch.optim.AdamW):
    """AdamW as torch < 2.4 has it on a CPU: fused=True is refused when it is built."""

    def __init__(self, *args, fused=None, **kwargs):
        if fused:
            raise RuntimeError("`fused=True` requires all the params to be on supported devices")
        super().__init__(*args, **kwargs)


def test_the_built_optimizer_is_fused_on_this_cpu_and_steps_as_torchs_default_adamw():
    torch.manual_seed(0)
    model = CharRNN(CONFIG)
    reference, initial = copy.deepcopy(model), copy.deepcopy(model)
    config = TrainConfig(lr=1e-2, weight_decay=0.1)
    built, plain = nopt.build_optimizer(model, config), _reference(reference, config)
    assert built.defaults["fused"]
    for step in range(30):
        for m, o in ((model, built), (reference, plain)):
            _gradients(m, step)
            o.step()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    moved = max((p - q).abs().max() for p, q in zip(model.parameters(), initial.parameters()))
    assert moved > 0.05  # the weights did move: thirty steps of lr 1e-2


def test_without_the_fused_kernel_it_falls_back_to_torchs_default(monkeypatch):
    monkeypatch.setattr(torch.optim, "AdamW", NoFusedAdamW)
    built = nopt.build_optimizer(CharRNN(CONFIG), TrainConfig())
    assert isinstance(built, NoFusedAdamW) and not built.defaults["fused"]
    assert not nopt.defers_checks(torch.device("cuda"), built)  # no found_inf without fusion


def test_the_finite_check_is_deferred_on_cuda_with_the_fused_optimizer_only():
    built = nopt.build_optimizer(CharRNN(CONFIG), TrainConfig())
    assert nopt.defers_checks(torch.device("cuda"), built)
    assert not nopt.defers_checks(torch.device("cpu"), built)


@pytest.mark.parametrize("saved_fused", [True, False])
def test_a_loaded_state_keeps_the_live_implementation(monkeypatch, saved_fused):
    """A resume point saved by a fused optimizer (a GPU run) loads into one without the kernel,
    and one saved by an older, unfused version into a fused one: the state comes along, the way
    of computing stays the live one's."""
    torch.manual_seed(0)
    model = CharRNN(CONFIG)
    with monkeypatch.context() as patch:
        if not saved_fused:
            patch.setattr(torch.optim, "AdamW", NoFusedAdamW)
        saved = nopt.build_optimizer(model, TrainConfig())
    _gradients(model, 0)
    saved.step()
    state = copy.deepcopy(saved.state_dict())
    with monkeypatch.context() as patch:
        if saved_fused:
            patch.setattr(torch.optim, "AdamW", NoFusedAdamW)
        live = nopt.build_optimizer(model, TrainConfig())
    nopt.load_state(live, state)
    assert all(bool(g["fused"]) is (not saved_fused) for g in live.param_groups)
    for p in model.parameters():
        torch.testing.assert_close(live.state[p]["exp_avg"], saved.state[p]["exp_avg"])
    _gradients(model, 1)
    live.step()  # and it steps

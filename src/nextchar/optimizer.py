"""The optimizer: Adam or AdamW, with weight decay on the matrices only, in torch's fused kernel
wherever it runs (CPU since torch 2.4, CUDA). On a CPU it is 2.6x faster than torch's per-tensor
loop inside a training step (3.4 -> 1.3 ms for a 2x256 LSTM, about 4% of a step at 16 streams;
BENCHMARKS.md). On CUDA it also skips a non-finite step by itself (see guard.py).
"""

from __future__ import annotations

import torch

from .config import TrainConfig


def defers_checks(device: torch.device, optimizer: torch.optim.Optimizer) -> bool:
    """Whether the per-step "is this step finite?" check stays on the device (see guard.py).

    On CUDA, reading it every step would make the host wait for the GPU each step; instead the
    fused optimizer skips a non-finite step by itself (found_inf) and the counts are read at log
    steps. On the CPU the check costs nothing and is read at once."""
    return device.type == "cuda" and bool(optimizer.defaults.get("fused"))


IMPLEMENTATION = ("fused", "foreach")  # how a step is computed, not what it computes


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Weight decay on matrices only (group 0); biases and the embedding table's rows are left
    alone (group 1). Fused where this torch has the kernel for the weights' device, else torch's
    default implementation (the same arithmetic)."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and not n.startswith("embed")]
    rest = [
        p for n, p in model.named_parameters() if not (p.dim() >= 2 and not n.startswith("embed"))
    ]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    try:
        return cls(groups, lr=config.lr, betas=(0.9, 0.99), fused=True)
    except RuntimeError:  # torch < 2.4 on a CPU, or a device without the fused kernel
        return cls(groups, lr=config.lr, betas=(0.9, 0.99))


def load_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a saved state_dict but keep this optimizer's implementation: a resume point records
    its param_groups' `fused` flag, which a run saved on a GPU (or by an older version) would
    otherwise impose on a machine whose torch has no such kernel."""
    kept = [{k: group.get(k) for k in IMPLEMENTATION} for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, implementation in zip(optimizer.param_groups, kept):
        group.update(implementation)


def set_weight_decay(optimizer: torch.optim.Optimizer, weight_decay: float) -> None:
    """A resumed run may change --weight-decay: it applies to the matrices (group 0) only."""
    for k, group in enumerate(optimizer.param_groups):
        group["weight_decay"] = weight_decay if k == 0 else 0.0


def clip_gradients(params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """Clip the gradients to `max_norm` (0: not at all) -> their norm before clipping."""
    if max_norm > 0:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    norms = [torch.linalg.vector_norm(p.grad) for p in params if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms))

"""The optimizer: Adam or AdamW, with weight decay on the matrices only; fused on CUDA, where it
also skips a non-finite step by itself (see guard.py).
"""

from __future__ import annotations

import torch

from .config import TrainConfig


def defers_checks(device: torch.device) -> bool:
    """Whether the per-step "is this step finite?" check stays on the device (see guard.py).

    On CUDA, reading it every step would make the host wait for the GPU each step; instead the
    fused optimizer skips a non-finite step by itself (found_inf) and the counts are read at log
    steps. On the CPU the check costs nothing and is read at once."""
    return device.type == "cuda"


def build_optimizer(
    model: torch.nn.Module, config: TrainConfig, fused: bool = False
) -> torch.optim.Optimizer:
    """Weight decay on matrices only (group 0); biases and the embedding table's rows are left
    alone (group 1). `fused`: one kernel per step, which can also skip a step on the device."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and not n.startswith("embed")]
    rest = [
        p for n, p in model.named_parameters() if not (p.dim() >= 2 and not n.startswith("embed"))
    ]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=config.lr, betas=(0.9, 0.99), **({"fused": True} if fused else {}))


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

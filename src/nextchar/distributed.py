"""torch.distributed plumbing for training: process group from torchrun's environment, flag
consensus, gathering carried state. Only the trainer imports this module."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import UserError


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")  # where collectives' tensors live (cuda for nccl)

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def rows(self, batch_size: int) -> slice:
        """The streams (rows of the global batch) this process owns."""
        if batch_size % self.world:
            raise UserError(f"--batch-size {batch_size} must be divisible by the number of "
                            f"processes ({self.world})")
        per = batch_size // self.world
        return slice(self.rank * per, (self.rank + 1) * per)

    def any_flags(self, flags: list[int]) -> list[int]:
        """Element-wise max of small integer flags over all processes (a consensus per step)."""
        if not self.active:
            return flags
        tensor = torch.tensor(flags, dtype=torch.int64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor.tolist()

    def sum(self, value: float) -> float:
        if not self.active:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return float(tensor.item())

    def gather_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """(L, B_local, H) on every process -> (L, B, H) in rank order (all processes get it)."""
        if not self.active:
            return tensor
        local = tensor.detach().to(self.device).contiguous()
        parts = [torch.empty_like(local) for _ in range(self.world)]
        dist.all_gather(parts, local)
        return torch.cat(parts, dim=1)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()


def setup(device_kind: str) -> Dist:
    """Join the process group torchrun describes in the environment; a lone process gets Dist()."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device_kind == "cuda" else "gloo"
    timeout = datetime.timedelta(seconds=float(os.environ.get("NEXTCHAR_DIST_TIMEOUT", "1800")))
    if device_kind == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timeout)
    device = torch.device("cuda", local_rank) if device_kind == "cuda" else torch.device("cpu")
    return Dist(rank=rank, world=world, local_rank=local_rank, device=device)

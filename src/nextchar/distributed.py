"""torch.distributed plumbing for training: process group from torchrun's environment, flag
consensus, gathering carried state. Only the trainer imports this module.

Every collective here is guarded: when another rank dies (its sockets close) or stops answering
for NEXTCHAR_DIST_TIMEOUT seconds, the RuntimeError of the collective becomes a PeerFailure that
says so in one line, instead of a C++ traceback or a hang.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .errors import PeerFailure, UserError

DEFAULT_TIMEOUT_S = 1800.0  # longer than the slowest evaluation rank 0 runs while the others wait


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")  # where collectives' tensors live (cuda for nccl)
    host_group: Any = None  # a gloo group for host-side values when the default group is nccl
    timeout: float = DEFAULT_TIMEOUT_S
    broken: bool = False  # a collective failed: the group cannot be torn down politely

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def rows(self, batch_size: int) -> slice:
        """The streams (rows of the global batch) this process owns."""
        if batch_size % self.world:
            raise UserError(
                f"--batch-size {batch_size} must be divisible by the number of "
                f"processes ({self.world})"
            )
        per = batch_size // self.world
        return slice(self.rank * per, (self.rank + 1) * per)

    @contextlib.contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """Turn the failure of a collective inside the block into a PeerFailure naming `what`."""
        if not self.active:
            yield
            return
        try:
            yield
        except (
            RuntimeError
        ) as exc:  # torch.distributed.DistError and gloo's errors are RuntimeErrors
            self.broken = True
            detail = " ".join(str(exc).split())[:300] or type(exc).__name__
            raise PeerFailure(
                f"rank {self.rank} of {self.world}: lost contact with the other training processes "
                f"during {what} ({detail}); another process probably crashed, was killed, or did not "
                f"answer within NEXTCHAR_DIST_TIMEOUT={self.timeout:g}s - its own output says which"
            ) from exc

    def any_flags(self, flags: list[int]) -> list[int]:
        """Element-wise max of small integer flags over all processes (a consensus per step).
        Host tensors over gloo, so that on GPUs it never waits for the device."""
        if not self.active:
            return flags
        tensor = torch.tensor(flags, dtype=torch.int64)
        with self.guard("the per-step agreement on when to stop, evaluate and save"):
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=self.host_group)
        return tensor.tolist()

    def sum(self, value: float) -> float:
        if not self.active:
            return value
        tensor = torch.tensor([value], dtype=torch.float64)
        with self.guard("the sum of the logged loss"):
            dist.all_reduce(tensor, group=self.host_group)
        return float(tensor.item())

    def gather_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """(L, B_local, H) on every process -> (L, B, H) in rank order (all processes get it)."""
        if not self.active:
            return tensor
        local = tensor.detach().to(self.device).contiguous()
        parts = [torch.empty_like(local) for _ in range(self.world)]
        with self.guard("the gathering of the carried hidden state for a checkpoint"):
            dist.all_gather(parts, local)
        return torch.cat(parts, dim=1)

    def gather_hidden(self, hidden) -> tuple[torch.Tensor, ...]:
        """A carried state h or (h, c) with every process's rows, as a tuple; () for None."""
        if hidden is None:
            return ()
        parts = hidden if isinstance(hidden, tuple) else (hidden,)
        return tuple(self.gather_rows(t) for t in parts)

    def wrap(self, raw_model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """DDP around the model with several processes; the model itself with one."""
        if not self.active:
            return raw_model
        with self.guard("the start of data-parallel training"):
            ids = [self.local_rank] if device.type == "cuda" else None
            return torch.nn.parallel.DistributedDataParallel(raw_model, device_ids=ids)

    def share(self, value: Any) -> Any:
        """Rank 0's `value` (any picklable object) on every process."""
        if not self.active:
            return value
        box = [value if self.is_main else None]
        with self.guard("the sharing of rank 0's choices for the run"):
            dist.broadcast_object_list(box, src=0, group=self.host_group)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            with self.guard("a barrier (waiting for rank 0 to set up the run)"):
                dist.barrier(group=self.host_group)

    def close(self) -> None:
        if self.active and dist.is_initialized() and not self.broken:
            try:  # tear down together: a rank leaving while a peer still works can abort gloo
                dist.barrier()
            except Exception:  # noqa: BLE001 - a broken peer: leave the group as it is
                return
            dist.destroy_process_group()


def setup(device_kind: str) -> Dist:
    """Join the process group torchrun describes in the environment; a lone process gets Dist().

    Backend nccl for CUDA (plus a gloo group for host-side flags), gloo otherwise. Collectives give
    up after NEXTCHAR_DIST_TIMEOUT seconds (default 1800)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device_kind == "cuda" else "gloo"
    try:
        seconds = float(os.environ.get("NEXTCHAR_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
    except ValueError:
        raise UserError("NEXTCHAR_DIST_TIMEOUT must be a number of seconds") from None
    if seconds <= 0:
        raise UserError("NEXTCHAR_DIST_TIMEOUT must be a positive number of seconds")
    timeout = datetime.timedelta(seconds=seconds)
    if device_kind == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UserError(
                f"LOCAL_RANK {local_rank} but this node has {torch.cuda.device_count()} "
                f"GPU(s); give torchrun --nproc-per-node at most that many"
            )
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timeout)
    host_group = dist.new_group(backend="gloo", timeout=timeout) if backend == "nccl" else None
    device = torch.device("cuda", local_rank) if device_kind == "cuda" else torch.device("cpu")
    return Dist(
        rank=rank,
        world=world,
        local_rank=local_rank,
        device=device,
        host_group=host_group,
        timeout=seconds,
    )

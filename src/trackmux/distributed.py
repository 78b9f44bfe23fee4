"""torch.distributed set-up and the few collectives the Trainer needs (torchrun, CPU or GPU)."""

from __future__ import annotations

import atexit
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in the job: ranks from torchrun's environment variables."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_world_zero(self) -> bool:
        return self.rank == 0

    @property
    def is_local_zero(self) -> bool:
        return self.local_rank == 0

    @classmethod
    def from_env(cls) -> DistributedContext:
        return cls(
            world_size=int(os.environ.get("WORLD_SIZE", "1")),
            rank=int(os.environ.get("RANK", "0")),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        )

    def initialise(
        self, device: torch.device, backend: str | None = None, timeout: int | None = None
    ) -> None:
        """Join the process group torchrun set up: ``backend`` (``ddp_backend``; default nccl
        on GPU, gloo on CPU), waiting up to ``timeout`` seconds (``ddp_timeout``)."""
        if not self.enabled or dist.is_initialized():
            return
        backend = backend or ("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        options = {} if timeout is None else {"timeout": datetime.timedelta(seconds=timeout)}
        dist.init_process_group(backend=backend, **options)
        # the group trackmux opened is closed at exit: a gloo group left to the interpreter's
        # teardown can abort the process ("terminate called without an active exception")
        atexit.register(_destroy_process_group)

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of ``value`` over all ranks (identity when not distributed)."""
        if not self.enabled:
            return value
        value = value.detach().clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value / self.world_size

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate ``tensor`` (same shape on every rank) from all ranks along dim 0."""
        if not self.enabled:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    def barrier(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.barrier()


def _destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()

"""Everything that knows about processes and ranks. The only module that imports torch.distributed or
accelerate; the trainer asks it, algorithms never do.

Launch with `accelerate launch --multi_gpu --num_processes N` (ACCELERATE_USE_CPU=true on CPU) or
`torchrun --nproc_per_node N`; a plain `python` run is one process. Gradients are averaged with one
all-reduce of the flattened gradients per optimizer step (after all the accumulation of an update), so
the model can be called any number of times per step, outside any wrapper.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager

import torch
import torch.distributed as dist


class Distributed:
    def __init__(self, cpu: bool | None = None):
        from accelerate import PartialState

        if cpu is None:
            cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true"
        self.state = PartialState(cpu=cpu)
        self.rank = self.state.process_index
        self.world_size = self.state.num_processes
        self.device = self.state.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1 and dist.is_available() and dist.is_initialized()

    def shard(self, n: int) -> slice:
        """This rank's contiguous part of a global batch of n items (n must divide evenly)."""
        if n % self.world_size != 0:
            raise ValueError(f"a global batch of {n} does not split over {self.world_size} processes")
        per = n // self.world_size
        return slice(self.rank * per, (self.rank + 1) * per)

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate equal-shaped tensors from every rank along dim 0, in rank order."""
        if not self.active:
            return t
        parts = [torch.empty_like(t) for _ in range(self.world_size)]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts)

    def all_reduce_mean(self, t: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return t
        t = t.clone()
        dist.all_reduce(t)
        return t / self.world_size

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """grad <- mean over ranks, one flattened all-reduce (params without grad count as zero)."""
        if not self.active:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    @contextmanager
    def main_first(self):
        """Rank 0 runs the block first (e.g. writes a file), the others after."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def shutdown(self) -> None:
        """End a multi-process run cleanly: gloo can abort in its destructor after all work is done, so
        sync, tear the group down, flush, and leave without running finalizers."""
        if not self.active:
            return
        dist.barrier()
        dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

"""Data-parallel statistics: which process this is, and the few collectives a pass needs.

A run started by ``accelerate launch --multi_gpu --num_processes P`` or ``torchrun
--nproc_per_node P`` has ``WORLD_SIZE=P`` in its environment; each process then reads its own
shard of the corpus and the sums are added with ``torch.distributed`` (gloo on CPU, NCCL on GPUs).
A plain run (``WORLD_SIZE`` unset or 1) touches no distributed machinery at all.

>>> dist = detect_dist()          # Dist(rank=0, world=1) in a plain run
>>> dist.all_reduce_(total)        # no-op with one process
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dist:
    """This process's place in the run; every collective is a no-op when ``world == 1``."""

    rank: int = 0
    world: int = 1
    device: torch.device | None = None  # where collectives' tensors must live (NCCL: the GPU)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def _on_device(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.device is None else t.to(self.device)

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` from every process, stacked: (world, *t.shape), on ``t``'s device."""
        if not self.active:
            return t[None]
        import torch.distributed as td

        local = self._on_device(t.contiguous())
        parts = [torch.empty_like(local) for _ in range(self.world)]
        td.all_gather(parts, local)
        return torch.stack(parts).to(t.device)

    def all_reduce_(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over processes, in place (on its own device when the backend allows)."""
        if not self.active:
            return t
        import torch.distributed as td

        local = self._on_device(t)
        td.all_reduce(local)
        if local is not t:
            t.copy_(local)
        return t

    def reduced_on_main(self, t: torch.Tensor) -> torch.Tensor:
        """The sum of ``t`` over processes on the main process (a copy; ``t`` is unchanged);
        other processes get their own copy back, which they should ignore."""
        copy = self._on_device(t.clone())
        if self.active:
            import torch.distributed as td

            td.reduce(copy, dst=0)
        return copy

    def broadcast(self, obj: Any) -> Any:
        """The main process's ``obj`` on every process (small picklable values only)."""
        if not self.active:
            return obj
        import torch.distributed as td

        box = [obj]
        td.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as td

            td.barrier()


def detect_dist() -> Dist:
    """This process's rank and the world size, from the launcher's environment.

    accelerate's ``PartialState`` sets up the process group: on a machine without GPUs it must be
    told ``cpu=True`` to pick gloo (otherwise it reports a single process even under a
    multi-process launch).
    """
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return Dist()
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    if state.num_processes != world:
        raise RuntimeError(f"WORLD_SIZE={world} but the process group has {state.num_processes} "
                           "processes")
    device = torch.device(state.device) if state.device.type != "cpu" else None
    logger.debug("process %d of %d (%s)", state.process_index, world, state.backend)
    return Dist(state.process_index, state.num_processes, device)

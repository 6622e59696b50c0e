"""Process-group set-up and the few collectives the trainer needs.

torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; a plain ``python train_gpt.py`` is one process.
CUDA uses NCCL, CPU uses gloo, so the same code runs in CI (2 CPU processes) and on 8 GPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(require_cuda: bool = False) -> DistInfo:
    """Join the torchrun process group (if any) and pick this rank's device."""
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif require_cuda:
        raise RuntimeError("no CUDA GPU visible (torch.cuda.is_available() is False); "
                           "use PRESET=tiny for a CPU run")
    else:
        device = torch.device("cpu")
    if world_size > 1 and not tdist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        tdist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    return DistInfo(rank, world_size, local_rank, device)


def all_reduce_(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce (sum or max); a no-op in a single process."""
    if tdist.is_available() and tdist.is_initialized():
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM if op == "sum" else tdist.ReduceOp.MAX)
    return t


def broadcast_(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    if tdist.is_available() and tdist.is_initialized():
        tdist.broadcast(t, src)
    return t


def barrier() -> None:
    if tdist.is_available() and tdist.is_initialized():
        tdist.barrier()


def shutdown() -> None:
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()

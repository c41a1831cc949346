"""Several processes, one run: what DistributedDataParallel training needs from torchrun's environment.

`torchrun --nproc_per_node=N transformer_playground.py ...` starts N copies of the program with RANK,
WORLD_SIZE and LOCAL_RANK set. Each process trains on its own share of every batch; gradients are
averaged by DDP; only rank 0 writes logs, checkpoints and metrics. Without torchrun, world_size is 1
and every function here does nothing.
"""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    enabled: bool = False  # started by torchrun (even with one process: the same DDP code path runs)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_environment() -> Dist:
    """Read torchrun's variables (absent: one plain process)."""
    return Dist(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                int(os.environ.get("LOCAL_RANK", 0)), enabled="WORLD_SIZE" in os.environ)


def init(d: Dist, device: torch.device) -> torch.device:
    """Join the process group (NCCL on CUDA, gloo on CPU) and return this process's device."""
    if not d.enabled:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def shutdown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def sum_across(d: Dist, tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all processes (in place); the identity for one process."""
    if d.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def from_main(d: Dist, value):
    """Rank 0's value of any picklable object, on every rank."""
    if not d.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_to_main(d: Dist, value) -> list:
    """Every rank's value, as a list in rank order (on every rank)."""
    if not d.enabled:
        return [value]
    values = [None] * d.world_size
    dist.all_gather_object(values, value)
    return values

"""torch.distributed helpers for runs under ``torchrun`` (DDP). No home-made cluster code: torchrun sets
RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR and ``init_process_group`` reads them (NCCL on GPUs, gloo on CPU)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | None = None, backend: str | None = None) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); otherwise a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if dev.type == "cuda" else "gloo"))
    rank = dist.get_rank() if dist.is_initialized() else 0
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def gather_with_grad(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate ``t`` from every rank in rank order; gradient flows only into this rank's slice (callers
    multiply the loss by world_size so DDP's gradient average equals the global-batch gradient)."""
    if not info.enabled:
        return t
    parts = [torch.empty_like(t) for _ in range(info.world_size)]
    dist.all_gather(parts, t.detach().contiguous())
    parts[info.rank] = t
    return torch.cat(parts)


def gather_nograd(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if not info.enabled:
        return t
    parts = [torch.empty_like(t) for _ in range(info.world_size)]
    dist.all_gather(parts, t.detach().contiguous())
    return torch.cat(parts)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()

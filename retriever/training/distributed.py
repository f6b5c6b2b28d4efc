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


def rank_seed(seed: int, rank: int) -> int:
    """The torch seed of ``rank``: ``seed`` itself on rank 0 (a one-process run is seeded as before), a distinct
    stream derived from (seed, rank) on the others. With one seed on every rank, every rank would draw the *same*
    dropout masks (correlated noise across the global batch, e.g. rank 0's and rank 1's first examples dropping
    the same units) instead of independent ones as a single process on the global batch does."""
    if rank == 0:
        return seed
    import numpy as np

    return int(np.random.SeedSequence([seed, rank]).generate_state(1, np.uint64)[0] >> 1)


def seed_rank(seed: int, info: DistInfo) -> None:
    """Seed torch (CPU and CUDA) for this rank: dropout masks differ across ranks, reproducibly."""
    torch.manual_seed(rank_seed(seed, info.rank))


def all_reduce_grads(params: list[torch.nn.Parameter], info: DistInfo, divide_by: float) -> None:
    """Sum the ``.grad`` of ``params`` over ranks (a missing grad counts as zero), then divide by ``divide_by``;
    one flat all-reduce. For parameters outside the DDP-wrapped model (a learnable temperature)."""
    if not info.enabled or not params:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= divide_by
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n


def all_gather_objects(obj, info: DistInfo) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (small objects: RNG states)."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()

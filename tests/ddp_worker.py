"""Run under torchrun by test_distributed.py: one training step on this rank's slice of a global batch; rank 0
writes the (all-reduced) gradients and the updated parameters as safetensors."""
from __future__ import annotations

import sys

import torch
from safetensors.torch import save_file

from retr.retriever.training.arguments import TrainConfig
from retr.retriever.training.distributed import init_distributed
from retr.retriever.training.driver import build_trainer
from retr.retriever.training.samplers import local_slice


def config(model_dir: str, data_dir: str, out: str, grad_cache: bool, gather: bool, mode: str = "supervised") -> TrainConfig:
    return TrainConfig(output_dir=out, model=model_dir, train_data=[data_dir], train_split="test", batch_size=4,
                       train_negatives=1, lr=1e-3, warmup_ratio=0.0, max_steps=1, seed=5, grad_cache=grad_cache,
                       gc_query_chunk=1, gc_passage_chunk=3, gather_negatives=gather, max_grad_norm=None, mode=mode,
                       chunk_length=8, queue_size=16, momentum=0.5)


def one_step(cfg: TrainConfig, dist=None) -> dict[str, torch.Tensor]:
    trainer = build_trainer(cfg, dist=dist)
    batch = trainer.sampler.batches(0)[0]
    if dist is not None and dist.enabled:
        batch = local_slice(batch, dist.rank, dist.world_size)
    trainer.compute_gradients(trainer.collate(batch, 0))
    out = {f"grad.{n}": p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    trainer.optimizer_step()
    out.update({f"param.{n}": p.detach().clone() for n, p in trainer.model.named_parameters()})
    out.update({f"task.{n}": t.detach().clone() for n, t in trainer.task.state_dict().items() if "queue" in n})
    return out


if __name__ == "__main__":
    model_dir, data_dir, out, grad_cache, gather = sys.argv[1:6]
    mode = sys.argv[6] if len(sys.argv) > 6 else "supervised"
    dist = init_distributed()
    result = one_step(config(model_dir, data_dir, out, grad_cache == "1", gather == "1", mode), dist)
    if dist.is_main:
        save_file({k: v.contiguous() for k, v in result.items()}, out + "/rank0.safetensors")

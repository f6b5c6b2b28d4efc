"""Run under torchrun by test_distributed.py: one training step on this rank's slice of a global batch; every rank
writes its (all-reduced) gradients and updated parameters (model and task) as ``rank{r}.safetensors``.

Also, for one process: ``one_step`` (the global batch at once) and ``emulated_step`` (the global batch as W ranks
would see it: each rank's slice collated and encoded under that rank's RNG, so with dropout on every example gets
the mask its rank draws; the loss over the concatenation, as the gathered DDP loss)."""
from __future__ import annotations

import json
import sys

import torch
from safetensors.torch import save_file

from retr.retriever.training.arguments import TrainConfig
from retr.retriever.training.distributed import DistInfo, init_distributed, seed_rank
from retr.retriever.training.driver import build_trainer
from retr.retriever.training.grad_cache import split_inputs
from retr.retriever.training.samplers import local_slice


def config(model_dir: str, data_dir: str, out: str, grad_cache: bool, gather: bool, mode: str = "supervised",
           **extra) -> TrainConfig:
    kw = dict(output_dir=out, model=model_dir, train_data=[data_dir], train_split="test", batch_size=4,
              train_negatives=1, lr=1e-3, warmup_ratio=0.0, max_steps=1, seed=5, grad_cache=grad_cache,
              gc_query_chunk=1, gc_passage_chunk=3, gather_negatives=gather, max_grad_norm=None, mode=mode,
              chunk_length=8, queue_size=16, momentum=0.5)
    kw.update(extra)
    return TrainConfig(**kw)


def _result(trainer) -> dict[str, torch.Tensor]:
    out = {f"grad.{n}": p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    out.update({f"taskgrad.{n}": p.grad.detach().clone() for n, p in trainer.task.named_parameters()
                if p.grad is not None})
    trainer.optimizer_step()
    out.update({f"param.{n}": p.detach().clone() for n, p in trainer.model.named_parameters()})
    out.update({f"taskparam.{n}": p.detach().clone() for n, p in trainer.task.named_parameters()})
    out.update({f"task.{n}": t.detach().clone() for n, t in trainer.task.state_dict().items() if "queue" in n})
    return out


def one_step(cfg: TrainConfig, dist=None) -> dict[str, torch.Tensor]:
    trainer = build_trainer(cfg, dist=dist)
    trainer.seed_rng()  # as Trainer.train does: rank-specific dropout streams
    batch = trainer.sampler.batches(0)[0]
    if dist is not None and dist.enabled:
        batch = local_slice(batch, dist.rank, dist.world_size)
    trainer.compute_gradients(trainer.collate(batch, 0))
    return _result(trainer)


def emulated_step(cfg: TrainConfig, world_size: int, same_seed: bool = False) -> dict[str, torch.Tensor]:
    """One process, the gathered DDP step of ``world_size`` ranks: per rank, its RNG seeded as that rank's, its
    MoCo keys, then its towers (whole, or GradCache chunks in GradCache's order: the same masks); then the loss
    over all ranks' representations. Needs ``gather_negatives`` (the loss is the global batch's).
    ``same_seed``: every rank seeded with ``cfg.seed`` (what DDP did before ranks had their own streams)."""
    assert cfg.gather_negatives
    trainer = build_trainer(cfg)
    trainer.model.train()
    trainer.task.train()
    batch = trainer.sampler.batches(0)[0]
    moco = hasattr(trainer.task, "key_encoder")
    if moco:
        trainer.task.key_encoder.update(trainer.model.query_encoder)  # once per step on every rank
    sizes = {"queries": cfg.gc_query_chunk, "passages": cfg.gc_passage_chunk, "pairs": cfg.gc_passage_chunk}
    reps: dict[str, list[torch.Tensor]] = {}
    extras: dict[str, list[torch.Tensor]] = {}
    for r in range(world_size):
        inputs = trainer.collate(local_slice(batch, r, world_size), 0)
        seed_rank(cfg.seed, DistInfo(rank=0 if same_seed else r, world_size=world_size))
        if moco:
            extras.setdefault("keys", []).append(trainer.task.encode_keys(inputs["passages"], trainer.device))
        else:
            for k, v in trainer.task.extras(inputs, trainer.model, trainer.device).items():
                extras.setdefault(k, []).append(v)
        for name, tower in trainer.task.towers(inputs).items():
            parts = split_inputs(tower, sizes[name]) if cfg.grad_cache else [tower]
            for part in parts:
                reps.setdefault(name, []).append(trainer.model(**{name: part})[name])
    cat_extras = {k: torch.cat(v) for k, v in extras.items()}
    loss = trainer.task.compute_loss({k: torch.cat(v) for k, v in reps.items()}, cat_extras)
    loss.backward()
    trainer._extras = cat_extras  # what the MoCo queue takes after the step
    return _result(trainer)


if __name__ == "__main__":
    model_dir, data_dir, out, grad_cache, gather = sys.argv[1:6]
    mode = sys.argv[6] if len(sys.argv) > 6 else "supervised"
    extra = json.loads(sys.argv[7]) if len(sys.argv) > 7 else {}
    dist = init_distributed()
    result = one_step(config(model_dir, data_dir, out, grad_cache == "1", gather == "1", mode, **extra), dist)
    save_file({k: v.contiguous() for k, v in result.items()}, f"{out}/rank{dist.rank}.safetensors")

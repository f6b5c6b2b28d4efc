"""The trainer's GradCache step gives the same gradients as its plain step for every task (supervised with
separate towers, MoCo, reranker), and TensorBoard logging writes event files."""
from __future__ import annotations

import pytest
import torch

from conftest import make_tiny_bert, write_beir
from retr.retriever.training.arguments import TrainConfig
from retr.retriever.training.driver import build_trainer


@pytest.fixture(scope="module")
def nodrop(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("nodrop-gc"), dropout=0.0)


def _grads(cfg: TrainConfig):
    torch.manual_seed(0)
    trainer = build_trainer(cfg)
    batch = trainer.sampler.batches(0)[0]
    loss = trainer.compute_gradients(trainer.collate(batch, 0))
    params = list(trainer.model.named_parameters()) + list(trainer.task.named_parameters())
    return loss, {n: p.grad.clone() for n, p in params if p.grad is not None}


@pytest.mark.parametrize("mode,extra", [
    ("supervised", {"separate_towers": True, "train_negatives": 2}),
    ("supervised", {"train_negatives": 1, "matryoshka_dims": [32, 16, 8]}),
    ("unsupervised", {"moco": True, "queue_size": 16, "chunk_length": 8}),
    ("unsupervised", {"moco": False, "chunk_length": 8, "symmetric": True}),
    ("reranker", {"train_negatives": 2}),
])
def test_grad_cache_step_equals_plain_step(tmp_path, nodrop, mode, extra):
    data = write_beir(tmp_path / "d")
    common = dict(output_dir=str(tmp_path / "o"), mode=mode, model=str(nodrop), train_data=[str(data)],
                  train_split="test", batch_size=4, max_steps=1, save_steps=0, **extra)
    loss_a, plain = _grads(TrainConfig(**common))
    loss_b, cached = _grads(TrainConfig(grad_cache=True, gc_query_chunk=1, gc_passage_chunk=3, **common))
    assert loss_a == pytest.approx(loss_b, abs=1e-5)
    assert plain.keys() == cached.keys() and plain
    for k in plain:
        torch.testing.assert_close(plain[k], cached[k], atol=1e-5, rtol=1e-4, msg=k)


def test_tensorboard_logging(tmp_path, nodrop):
    pytest.importorskip("tensorboard")
    data = write_beir(tmp_path / "d")
    cfg = TrainConfig(output_dir=str(tmp_path / "o"), model=str(nodrop), train_data=[str(data)], train_split="test",
                      batch_size=4, max_steps=2, logging_steps=1, save_steps=0, report_to=["tensorboard"])
    build_trainer(cfg).train()
    assert list((tmp_path / "o" / "tensorboard").glob("events.out.tfevents.*"))

"""MoCo under GradCache: keys are encoded chunk by chunk (without a graph) and equal the keys of one forward; the
MoCo loss over query chunks equals the unchunked loss, value and gradient. (Memory: benchmarks/moco_memory.py.)"""
from __future__ import annotations

import pytest
import torch

from conftest import make_tiny_bert, write_beir
from retr.retriever.losses import MoCoLoss
from retr.retriever.training.arguments import TrainConfig
from retr.retriever.training.driver import build_trainer


@pytest.fixture(scope="module")
def nodrop(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("nodrop-moco"), dropout=0.0)


def _trainer(tmp_path, model, grad_cache, **kw):
    data = write_beir(tmp_path / "d")
    cfg = TrainConfig(output_dir=str(tmp_path / "o"), mode="unsupervised", model=str(model), train_data=[str(data)],
                      batch_size=8, moco=True, queue_size=32, chunk_length=8, max_steps=1, save_steps=0,
                      grad_cache=grad_cache, gc_query_chunk=2, gc_passage_chunk=3, **kw)
    return build_trainer(cfg)


def test_keys_are_encoded_chunk_by_chunk_and_equal_unchunked_keys(tmp_path, nodrop):
    trainer = _trainer(tmp_path, nodrop, grad_cache=True)
    task = trainer.task
    assert task.key_chunk == 3 and task.loss.row_chunk == 2  # set from --gc-passage-chunk / --gc-query-chunk
    batch = trainer.collate(trainer.sampler.batches(0)[0], 0)
    seen = []
    hook = task.key_encoder.encoder.register_forward_hook(
        lambda mod, args, kwargs, out: seen.append((kwargs["input_ids"].shape[0], torch.is_grad_enabled())),
        with_kwargs=True)
    chunked = task.encode_keys(batch["passages"], trainer.device)
    hook.remove()
    assert seen == [(3, False), (3, False), (2, False)]  # three forwards of <= 3 crops, none recording a graph
    assert chunked.shape == (8, task.key_encoder.encoder.dim) and chunked.grad_fn is None
    task.key_chunk = None
    whole = task.encode_keys(batch["passages"], trainer.device)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)


def test_plain_training_encodes_keys_in_one_forward(tmp_path, nodrop):
    trainer = _trainer(tmp_path, nodrop, grad_cache=False)
    assert trainer.task.key_chunk is None and trainer.task.loss.row_chunk is None


@pytest.mark.parametrize("in_batch,similarity", [(True, "dot"), (False, "cos")])
def test_moco_loss_over_query_chunks_equals_whole_batch(in_batch, similarity):
    torch.manual_seed(0)
    whole = MoCoLoss(8, queue_size=40, temperature=0.1, similarity=similarity, in_batch_negatives=in_batch)
    chunked = MoCoLoss(8, queue_size=40, temperature=0.1, similarity=similarity, in_batch_negatives=in_batch,
                       row_chunk=3)
    keys = torch.randn(25, 8)
    whole.enqueue(keys)
    chunked.enqueue(keys)
    q = torch.randn(10, 8, requires_grad=True)
    k = torch.randn(10, 8)
    a = whole(q, k)
    (ga,) = torch.autograd.grad(a, q)
    b = chunked(q, k)
    (gb,) = torch.autograd.grad(b, q)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)
    torch.testing.assert_close(ga, gb, atol=1e-6, rtol=1e-5)

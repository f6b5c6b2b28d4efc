"""GradCache: with dropout ON and a fixed seed, parameter gradients equal the full-batch step's (same dropout
masks, i.e. the full graph built over the same chunks in the same RNG order) to 1e-5; turning the RNG replay
off breaks the equality (so the test can fail); with dropout off it equals one unchunked forward."""
from __future__ import annotations

import pytest
import torch

from conftest import make_tiny_bert
from retr.retriever.losses import InfoNCELoss
from retr.retriever.modeling import DualEncoder
from retr.retriever.training.grad_cache import cached_step, split_inputs

QUERIES = ["aspirin heart", "statins cholesterol levels", "vitamin d", "sleep and diabetes risk", "salt", "coffee liver"]
PASSAGES = [f"passage number {i} about " + "medicine " * (i % 7) for i in range(18)]  # 1 positive + 2 negatives each


@pytest.fixture(scope="module")
def dropout_model_dir(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("drop"), dropout=0.1)


def _model(path, separate):
    model = DualEncoder.from_pretrained(path, separate=separate)
    model.train()
    return model


def _inputs(model):
    return {"queries": dict(model.query_encoder.tokenize(QUERIES, True)),
            "passages": dict(model.passage_tower.tokenize(PASSAGES, False))}


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _forward(model):
    return lambda name, inputs, grad: model(**{name: inputs})[name]


def full_batch_grads(model, inputs, chunks, loss_fn, seed):
    """Reference: the full-batch graph, built chunk by chunk (same dropout draws as GradCache's first pass)."""
    torch.manual_seed(seed)
    model.zero_grad()
    reps = {name: torch.cat([model(**{name: part})[name] for part in split_inputs(inp, chunks[name])])
            for name, inp in inputs.items()}
    loss = loss_fn(reps["queries"], reps["passages"])
    loss.backward()
    return loss.item(), _grads(model)


def gc_grads(model, inputs, chunks, loss_fn, seed, replay=True):
    torch.manual_seed(seed)
    model.zero_grad()
    loss = cached_step(_forward(model), {n: (inp, chunks[n]) for n, inp in inputs.items()},
                       lambda reps: loss_fn(reps["queries"], reps["passages"]), torch.device("cpu"), replay_rng=replay)
    return loss.item(), _grads(model)


def _max_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize("separate", [False, True])
@pytest.mark.parametrize("chunks", [{"queries": 2, "passages": 6}, {"queries": 4, "passages": 5}])  # divides / doesn't
def test_gradcache_equals_full_batch_with_dropout(dropout_model_dir, separate, chunks):
    model = _model(dropout_model_dir, separate)
    inputs = _inputs(model)
    loss_fn = InfoNCELoss(temperature=0.05)
    ref_loss, ref = full_batch_grads(model, inputs, chunks, loss_fn, seed=7)
    gc_loss, got = gc_grads(model, inputs, chunks, loss_fn, seed=7)
    assert gc_loss == pytest.approx(ref_loss, abs=1e-6)
    assert _max_diff(ref, got) <= 1e-5
    if separate:  # both towers received gradients
        assert any(k.startswith("passage_encoder") for k in got) and any(k.startswith("query_encoder") for k in got)


def test_without_rng_replay_gradients_differ(dropout_model_dir):
    model = _model(dropout_model_dir, False)
    inputs = _inputs(model)
    chunks = {"queries": 2, "passages": 6}
    loss_fn = InfoNCELoss(temperature=0.05)
    _, ref = full_batch_grads(model, inputs, chunks, loss_fn, seed=7)
    _, got = gc_grads(model, inputs, chunks, loss_fn, seed=7, replay=False)
    assert _max_diff(ref, got) > 1e-4


def test_equals_one_unchunked_forward_without_dropout(tiny_model_dir, tmp_path):
    model = _model(make_tiny_bert(tmp_path / "nodrop", dropout=0.0), False)
    inputs = _inputs(model)
    loss_fn = InfoNCELoss(temperature=0.05)
    model.zero_grad()
    reps = model(**inputs)
    loss_fn(reps["queries"], reps["passages"]).backward()
    ref = _grads(model)
    _, got = gc_grads(model, inputs, {"queries": 4, "passages": 5}, loss_fn, seed=0)
    assert _max_diff(ref, got) <= 1e-5


def test_split_inputs_trims_padding():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0]])
    parts = split_inputs({"input_ids": mask * 5, "attention_mask": mask}, 2)
    assert [p["input_ids"].shape for p in parts] == [(2, 3), (1, 2)]

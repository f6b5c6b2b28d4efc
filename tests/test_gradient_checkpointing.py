"""--gradient-checkpointing (issue 19): with dropout on, checkpointed blocks under GradCache give the gradients of
the step without checkpointing, because the replayed RNG state reaches the blocks' recomputation too; a
checkpoint that does not preserve the RNG state breaks the equality (so the test can fail)."""
from __future__ import annotations

import functools

import pytest
import torch
import torch.utils.checkpoint

from conftest import make_tiny_bert, make_tiny_decoder, write_beir
from retr.retriever.losses import InfoNCELoss
from retr.retriever.modeling import DualEncoder
from retr.retriever.modeling.hf_switches import enable_gradient_checkpointing, gradient_checkpointing_on
from retr.retriever.training.arguments import TrainConfig
from retr.retriever.training.driver import build_trainer
from retr.retriever.training.grad_cache import cached_step, split_inputs

QUERIES = ["aspirin heart", "statins cholesterol levels", "vitamin d", "sleep and diabetes risk"]
PASSAGES = [f"passage {i} about " + "medicine " * (i % 5) for i in range(8)]
CHUNKS = {"queries": 3, "passages": 3}


@pytest.fixture(scope="module")
def dropout_bert(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("ckpt-drop"), dropout=0.2)


@pytest.fixture(scope="module", params=["bert", "qwen2"])
def dropout_model(request, tmp_path_factory, dropout_bert):
    if request.param == "bert":
        return dropout_bert
    return make_tiny_decoder(tmp_path_factory.mktemp("ckpt-qwen2"), "qwen2", dropout=0.2)


def _model(path, checkpointing: bool, kwargs: dict | None = None) -> DualEncoder:
    model = DualEncoder.from_pretrained(path, pooling="last" if "qwen2" in str(path) else None)
    if checkpointing:
        enable_gradient_checkpointing(model.query_encoder.model)
        if kwargs is not None:  # e.g. a checkpoint that does not preserve the RNG state
            func = functools.partial(torch.utils.checkpoint.checkpoint, **kwargs)
            for m in model.query_encoder.model.modules():
                if hasattr(m, "_gradient_checkpointing_func"):
                    m._gradient_checkpointing_func = func
    model.train()
    return model


def _inputs(model):
    return {"queries": dict(model.query_encoder.tokenize(QUERIES, True)),
            "passages": dict(model.passage_tower.tokenize(PASSAGES, False))}


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _reference(model, seed):
    """The full-batch graph built chunk by chunk without checkpointing (GradCache's first-pass dropout draws)."""
    torch.manual_seed(seed)
    inputs = _inputs(model)
    reps = {n: torch.cat([model(**{n: part})[n] for part in split_inputs(inp, CHUNKS[n])]) for n, inp in inputs.items()}
    InfoNCELoss(0.05)(reps["queries"], reps["passages"]).backward()
    return _grads(model)


def _cached(model, seed):
    torch.manual_seed(seed)
    inputs = _inputs(model)
    loss_fn = InfoNCELoss(0.05)
    cached_step(lambda name, inp, grad: model(**{name: inp})[name], {n: (inp, CHUNKS[n]) for n, inp in inputs.items()},
                lambda reps: loss_fn(reps["queries"], reps["passages"]), torch.device("cpu"))
    return _grads(model)


def _max_diff(a, b):
    assert a.keys() == b.keys() and a
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_checkpointed_grad_cache_equals_the_step_without_checkpointing(dropout_model):
    ref = _reference(_model(dropout_model, False), seed=3)
    model = _model(dropout_model, True)
    assert gradient_checkpointing_on(model.query_encoder.model)
    calls = []
    original = torch.utils.checkpoint.checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    for m in model.query_encoder.model.modules():  # count that the blocks really were checkpointed
        if hasattr(m, "_gradient_checkpointing_func"):
            m._gradient_checkpointing_func = functools.partial(counting, use_reentrant=False, preserve_rng_state=True)
    got = _cached(model, seed=3)
    assert calls, "no block was checkpointed"
    assert _max_diff(ref, got) <= 1e-5
    # the equality rests on the replay inside the blocks: without it the recomputed dropout masks are new ones
    broken = _cached(_model(dropout_model, True, {"use_reentrant": False, "preserve_rng_state": False}), seed=3)
    assert _max_diff(ref, broken) > 1e-4


def test_trainer_step_with_checkpointing_and_grad_cache_equals_plain_step(tmp_path, dropout_bert):
    """Dropout on. GradCache chunks of the whole batch draw the plain step's masks; checkpointing and GradCache
    replay them, so every parameter gradient matches the plain step's."""
    data = write_beir(tmp_path / "d")
    common = dict(output_dir=str(tmp_path / "o"), model=str(dropout_bert), train_data=[str(data)], train_split="test",
                  batch_size=4, max_steps=1, save_steps=0, train_negatives=1)

    def grads(cfg, torch_seed=0):
        torch.manual_seed(torch_seed)
        trainer = build_trainer(cfg)
        assert gradient_checkpointing_on(trainer.model.query_encoder.model) == cfg.gradient_checkpointing
        loss = trainer.compute_gradients(trainer.collate(trainer.sampler.batches(0)[0], 0))
        return loss, _grads(trainer.model)

    loss_a, plain = grads(TrainConfig(**common))
    loss_b, both = grads(TrainConfig(gradient_checkpointing=True, grad_cache=True, gc_query_chunk=4,
                                     gc_passage_chunk=8, **common))
    assert loss_a == pytest.approx(loss_b, abs=1e-6)
    assert _max_diff(plain, both) <= 1e-5
    _, other_seed = grads(TrainConfig(**common), torch_seed=1)  # other dropout masks, other gradients
    assert _max_diff(plain, other_seed) > 1e-4

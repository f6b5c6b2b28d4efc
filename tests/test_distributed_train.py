"""DDP training, 2 gloo ranks under torchrun: a learnable temperature stays in sync across ranks (and with the
gather equals one process on the global batch); with dropout ON, a DDP step equals one process that replays each
rank's dropout RNG on that rank's slice (plain, GradCache, separate towers, MoCo); every rank draws its own masks.

Why not "DDP == one process on the global batch" with dropout: nn.Dropout draws its masks from the process's RNG
over the shape of the tensor it sees. One process encodes [B, L, H] in one draw; two ranks each draw [B/2, L', H]
(another shape, another padding width, another stream), so no seeding makes the masks equal. The property that
matters is that DDP computes the exact gradient of the global-batch loss *given the masks its ranks drew*, and
that those masks are independent across ranks (as they are across examples in one process): tested here.
"""
from __future__ import annotations

import json
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, make_tiny_bert
from test_distributed import torchrun

sys.path.insert(0, str(REPO / "tests"))
from ddp_worker import config, emulated_step, one_step  # noqa: E402

from retr.retriever.training.checkpoint import restore_rng  # noqa: E402
from retr.retriever.training.distributed import DistInfo, rank_seed, seed_rank  # noqa: E402


@pytest.fixture(scope="module")
def nodrop_dir(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("nodrop-t"), dropout=0.0)


@pytest.fixture(scope="module")
def drop_dir(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("drop"), dropout=0.2)


def _ddp(tmp_path, model, data, grad_cache, gather, mode="supervised", **extra):
    torchrun([str(REPO / "tests" / "ddp_worker.py"), str(model), str(data), str(tmp_path), grad_cache, gather, mode,
              json.dumps(extra)])
    return [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1)]


def _assert_equal(a, b, keys=None):
    keys = keys or b.keys()
    assert a.keys() >= set(keys)
    for k in keys:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4, msg=k)


@pytest.mark.distributed
@pytest.mark.parametrize("gather", ["0", "1"])
def test_learnable_temperature_in_sync_across_ranks(tmp_path, nodrop_dir, tiny_beir, gather):
    r0, r1 = _ddp(tmp_path, nodrop_dir, tiny_beir, "0", gather, learnable_temperature=True)
    t0, t1 = r0["taskparam.loss.log_scale"], r1["taskparam.loss.log_scale"]
    assert float(torch.exp(-t0)) != pytest.approx(0.05, abs=1e-6)  # it moved (lr 1e-3)
    torch.testing.assert_close(t0, t1, atol=0, rtol=0)  # before: 0.0495 vs 0.0505 without the gather
    _assert_equal(r0, r1, [k for k in r1 if k.startswith("param.")])
    if gather == "1":  # the global loss: one process on the global batch gives the same temperature gradient
        single = one_step(config(str(nodrop_dir), str(tiny_beir), str(tmp_path / "single"), False, True,
                                 learnable_temperature=True))
        _assert_equal(r0, single, ["taskgrad.loss.log_scale", "taskparam.loss.log_scale"])
    else:  # local losses: the all-reduced gradient is the mean of the ranks' local gradients, as DDP's for weights
        from retr.retriever.training.driver import build_trainer

        trainer = build_trainer(config(str(nodrop_dir), str(tiny_beir), str(tmp_path / "local"), False, False,
                                       learnable_temperature=True))
        batch, local = trainer.sampler.batches(0)[0], []
        for r in (0, 1):
            trainer.task.loss.log_scale.grad = None
            trainer.compute_gradients(trainer.collate(batch[2 * r:2 * r + 2], 0))
            local.append(trainer.task.loss.log_scale.grad.clone())
        torch.testing.assert_close(r0["taskgrad.loss.log_scale"], (local[0] + local[1]) / 2, atol=1e-6, rtol=1e-5)


@pytest.mark.distributed
@pytest.mark.parametrize("grad_cache,mode,separate", [
    ("0", "supervised", False),
    ("1", "supervised", False),
    ("0", "supervised", True),
    ("1", "supervised", True),  # DDP + GradCache + separate towers
    ("1", "unsupervised", False),  # MoCo: keys gathered into the queue
])
def test_ddp_with_dropout_equals_one_process_replaying_each_ranks_masks(tmp_path, drop_dir, tiny_beir, grad_cache,
                                                                          mode, separate):
    extra = {"separate_towers": True} if separate else {}
    r0, r1 = _ddp(tmp_path, drop_dir, tiny_beir, grad_cache, "1", mode, **extra)
    cfg = config(str(drop_dir), str(tiny_beir), str(tmp_path / "emu"), grad_cache == "1", True, mode, **extra)
    emulated = emulated_step(cfg, world_size=2)
    assert any(k.startswith("grad.") for k in emulated)
    if separate:
        assert any("passage_encoder" in k for k in emulated if k.startswith("grad."))
    if mode == "unsupervised":
        assert "task.loss.queue" in emulated
    _assert_equal(r0, emulated)
    _assert_equal(r1, emulated, [k for k in emulated if not k.startswith("grad.")])  # ranks agree after the step
    # the ranks drew different masks: replaying one stream on both slices does not reproduce the step
    shared = emulated_step(cfg, world_size=2, same_seed=True)
    assert max((shared[k] - r0[k]).abs().max().item() for k in shared if k.startswith("grad.")) > 1e-4
    # the global batch in one process draws other masks: the same step is not reproduced
    single = one_step(config(str(drop_dir), str(tiny_beir), str(tmp_path / "single"), grad_cache == "1", True, mode,
                             **extra))
    assert max((single[k] - r0[k]).abs().max().item() for k in single if k.startswith("grad.")) > 1e-4


def test_each_rank_draws_its_own_dropout_stream():
    assert rank_seed(7, 0) == 7  # one process (and rank 0) seeded as before
    seeds = [rank_seed(7, r) for r in range(4)]
    assert len(set(seeds)) == 4 and seeds == [rank_seed(7, r) for r in range(4)]
    draws = []
    for r in (0, 1):
        seed_rank(7, DistInfo(rank=r, world_size=2))
        draws.append(torch.nn.functional.dropout(torch.ones(1000), 0.5, training=True))
    assert not torch.equal(draws[0], draws[1])
    assert (draws[0] == draws[1]).float().mean() == pytest.approx(0.5, abs=0.06)  # independent masks


def test_checkpoint_rng_is_restored_per_rank():
    states = []
    for r in (0, 1):
        seed_rank(3, DistInfo(rank=r, world_size=2))
        states.append({"cpu": torch.get_rng_state()})
    flat = {"cpu": states[0]["cpu"], "rank1.cpu": states[1]["cpu"]}
    for r in (0, 1):
        torch.manual_seed(99)
        restore_rng(flat, rank=r)
        assert torch.equal(torch.get_rng_state(), states[r]["cpu"])
    torch.manual_seed(99)
    restore_rng({"cpu": states[0]["cpu"]}, rank=1)  # an older checkpoint: the one state it has
    assert torch.equal(torch.get_rng_state(), states[0]["cpu"])


@pytest.mark.distributed
def test_ddp_lora_equals_one_process(tmp_path, nodrop_dir, drop_dir, tiny_beir):
    """LoRA (issue 19) under 2 gloo ranks, with GradCache and activation checkpointing: without dropout the DDP
    step equals one process on the global batch; with dropout (model and adapters) it equals one process replaying
    each rank's masks. Only the adapters have gradients; the adapter init is the same on every rank (seeded)."""
    extra = {"lora_r": 4, "lora_dropout": 0.0, "gradient_checkpointing": True}
    (tmp_path / "nodrop").mkdir()
    (tmp_path / "drop").mkdir()
    r0, r1 = _ddp(tmp_path / "nodrop", nodrop_dir, tiny_beir, "1", "1", **extra)
    single = one_step(config(str(nodrop_dir), str(tiny_beir), str(tmp_path / "single"), True, True, **extra))
    grads = [k for k in single if k.startswith("grad.")]
    assert grads and all("lora_" in k for k in grads)
    _assert_equal(r0, single)
    _assert_equal(r1, single, [k for k in single if not k.startswith("grad.")])

    extra["lora_dropout"] = 0.2
    d0, d1 = _ddp(tmp_path / "drop", drop_dir, tiny_beir, "1", "1", **extra)
    cfg = config(str(drop_dir), str(tiny_beir), str(tmp_path / "emu"), True, True, **extra)
    emulated = emulated_step(cfg, world_size=2)
    _assert_equal(d0, emulated)
    _assert_equal(d1, emulated, [k for k in emulated if not k.startswith("grad.")])
    shared = emulated_step(cfg, world_size=2, same_seed=True)  # the ranks' own masks matter: the test can fail
    assert max((shared[k] - d0[k]).abs().max().item() for k in shared if k.startswith("grad.")) > 1e-4

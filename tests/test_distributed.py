"""DDP under torchrun with 2 gloo processes: one step equals a single process on the global batch (plain and
GradCache, shared and separate towers); without the gather it differs; distributed encoding equals one process;
checkpoint/resume works with 2 ranks."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, make_tiny_bert

pytestmark = pytest.mark.distributed


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-addr=127.0.0.1",
           f"--master-port={_port()}", *args]
    path = os.pathsep.join(p for p in (str(REPO / "tests"), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)  # keeps the caller's PYTHONPATH (an overlay)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def nodrop_dir(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("nodrop"), dropout=0.0)


@pytest.mark.parametrize("grad_cache,mode", [("0", "supervised"), ("1", "supervised"), ("1", "unsupervised")])
def test_two_ranks_equal_one_process_on_global_batch(tmp_path, nodrop_dir, tiny_beir, grad_cache, mode):
    """Supervised InfoNCE with a hard negative (plain and GradCache) and MoCo (keys gathered into the queue)."""
    sys.path.insert(0, str(REPO / "tests"))
    from ddp_worker import config, one_step

    torchrun([str(REPO / "tests" / "ddp_worker.py"), str(nodrop_dir), str(tiny_beir), str(tmp_path), grad_cache, "1",
              mode])
    ddp = load_file(str(tmp_path / "rank0.safetensors"))
    single = one_step(config(str(nodrop_dir), str(tiny_beir), str(tmp_path / "single"), grad_cache == "1", True, mode))
    if mode == "unsupervised":
        assert any(k.startswith("task.") for k in single)  # the MoCo queue holds the global batch's keys
    assert ddp.keys() == single.keys()
    for k in single:
        torch.testing.assert_close(ddp[k], single[k], atol=1e-5, rtol=1e-4, msg=k)


def test_without_gather_the_gradients_differ(tmp_path, nodrop_dir, tiny_beir):
    sys.path.insert(0, str(REPO / "tests"))
    from ddp_worker import config, one_step

    torchrun([str(REPO / "tests" / "ddp_worker.py"), str(nodrop_dir), str(tiny_beir), str(tmp_path), "0", "0"])
    ddp = load_file(str(tmp_path / "rank0.safetensors"))
    single = one_step(config(str(nodrop_dir), str(tiny_beir), str(tmp_path / "single"), False, True))
    diff = max((ddp[k] - single[k]).abs().max().item() for k in single if k.startswith("grad."))
    assert diff > 1e-4


def test_distributed_encoding_equals_one_process(tmp_path, tiny_model_dir, tiny_beir):
    torchrun(["-m", "retr.cli.main", "encode", "-m", str(tiny_model_dir), "-d", str(tiny_beir), "-o", str(tmp_path / "emb")])
    assert len(list((tmp_path / "emb").glob("shard-*-of-00002"))) == 2
    from retr.indexing import FaissIndex
    from retr.indexing.shards import load_shards
    from retr.retriever.data import load_corpus
    from retr.retriever.modeling import DualEncoder

    vectors, ids, _ = load_shards(tmp_path / "emb")
    corpus = load_corpus(tiny_beir / "corpus.jsonl")
    single = DualEncoder.from_pretrained(tiny_model_dir).encode_passages(corpus.passages())
    assert ids == list(corpus.ids)
    np.testing.assert_allclose(vectors, single, atol=1e-5)
    a, b = FaissIndex.build(vectors, ids), FaissIndex.build(single, list(corpus.ids))
    assert a.search(single[:4], 5)[1] == b.search(single[:4], 5)[1]


def test_checkpoint_and_resume_with_two_ranks(tmp_path, tiny_model_dir, tiny_beir):
    """With dropout on: each rank resumes its own RNG stream (saved per rank), so the weights match exactly."""
    def train(out: Path, extra=()):
        return torchrun(["-m", "retr.cli.main", "train", "-o", str(out), "-m", str(tiny_model_dir), "-d", str(tiny_beir),
                         "--split", "test", "--batch-size", "4", "--max-steps", "6", "--save-steps", "3", "--lr", "1e-3",
                         "--seed", "2", *extra])

    train(tmp_path / "a")
    train(tmp_path / "b")
    assert [p.name for p in (tmp_path / "b" / "checkpoints").iterdir()] == ["step-3"]
    import shutil

    shutil.rmtree(tmp_path / "b" / "model")  # as if killed after the step-3 checkpoint
    proc = train(tmp_path / "b", ["--resume"])
    assert "resumed from" in proc.stderr
    from retr.retriever.modeling import DualEncoder

    a = DualEncoder.from_pretrained(tmp_path / "a" / "model").state_dict()
    b = DualEncoder.from_pretrained(tmp_path / "b" / "model").state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)

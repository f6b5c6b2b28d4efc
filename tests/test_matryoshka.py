"""Matryoshka (issue 19): the loss is the sum of InfoNCE over re-normalised prefixes (against a direct
computation), ``truncate_dim`` encodes prefixes, ``retr index/eval --dim`` index them and record the dimension,
a query dimension that disagrees with the index is a one-line error, and a Matryoshka-trained model evaluates
end to end at a truncated dimension."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from conftest import make_tiny_bert, one_line_error, run_cli, write_beir
from retr.retriever.losses import InfoNCELoss, MatryoshkaLoss
from retr.retriever.modeling import Encoder, EncoderConfig


def _direct_infonce(q: torch.Tensor, p: torch.Tensor, temperature: float) -> float:
    """-mean_i log(exp(q_i . p_{iG} / t) / sum_j exp(q_i . p_j / t)), written out with plain loops."""
    group = p.size(0) // q.size(0)
    total = 0.0
    for i in range(q.size(0)):
        logits = [float(q[i] @ p[j]) / temperature for j in range(p.size(0))]
        top = max(logits)
        log_z = top + math.log(sum(math.exp(x - top) for x in logits))
        total += log_z - logits[i * group]
    return total / q.size(0)


def _unit_prefix(x: torch.Tensor, d: int) -> torch.Tensor:
    x = x[:, :d]
    return x / x.norm(dim=1, keepdim=True)


def test_loss_is_the_sum_of_infonce_over_renormalised_prefixes():
    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(4, 16, generator=g), dim=1)
    p = torch.nn.functional.normalize(torch.randn(12, 16, generator=g), dim=1)  # positive + 2 negatives per query
    dims = [16, 8, 4]
    loss = MatryoshkaLoss(InfoNCELoss(temperature=0.1), dims)(q, p)
    want = sum(_direct_infonce(_unit_prefix(q, d), _unit_prefix(p, d), 0.1) for d in dims)
    assert float(loss) == pytest.approx(want, rel=1e-5)
    # not the same as InfoNCE on the full vectors times 3, nor as prefixes left un-normalised
    assert float(loss) != pytest.approx(3 * _direct_infonce(q, p, 0.1), rel=1e-3)
    raw = MatryoshkaLoss(InfoNCELoss(temperature=0.1), dims, renormalize=False)(q, p)
    assert float(raw) == pytest.approx(sum(_direct_infonce(q[:, :d], p[:, :d], 0.1) for d in dims), rel=1e-5)
    assert float(raw) != pytest.approx(want, rel=1e-3)
    weighted = MatryoshkaLoss(InfoNCELoss(temperature=0.1), dims, weights=[1.0, 0.5, 0.0])(q, p)
    assert float(weighted) == pytest.approx(_direct_infonce(_unit_prefix(q, 16), _unit_prefix(p, 16), 0.1)
                                            + 0.5 * _direct_infonce(_unit_prefix(q, 8), _unit_prefix(p, 8), 0.1),
                                            rel=1e-5)


def test_loss_rejects_bad_dims():
    with pytest.raises(ValueError, match="repeated"):
        MatryoshkaLoss(InfoNCELoss(), [8, 8])
    with pytest.raises(ValueError, match="positive"):
        MatryoshkaLoss(InfoNCELoss(), [8, 0])
    with pytest.raises(ValueError, match="more than the embeddings"):
        MatryoshkaLoss(InfoNCELoss(), [32])(torch.randn(2, 16), torch.randn(2, 16))


def test_truncate_dim_encodes_renormalised_prefixes(tiny_model_dir):
    full = Encoder.from_pretrained(tiny_model_dir)
    cut = Encoder.from_pretrained(tiny_model_dir, truncate_dim=8)
    texts = ["aspirin and the heart", "salt intake", "a longer text about vitamin d and bone fractures"]
    a, b = full.encode(texts), cut.encode(texts)
    assert b.shape == (3, 8) and cut.dim == 8 and full.dim == 32
    want = a[:, :8] / np.linalg.norm(a[:, :8], axis=1, keepdims=True)
    np.testing.assert_allclose(b, want, atol=1e-5)
    assert cut.fingerprint() != full.fingerprint()
    with pytest.raises(ValueError, match="more than the model's 32"):
        Encoder.from_pretrained(tiny_model_dir, truncate_dim=64)


def test_default_settings_keep_their_fingerprint_keys(tiny_model_dir):
    """Fingerprints hash the settings dict: with the new options unused it has exactly the keys it had before
    issue 19, so existing index/cache fingerprints stay valid."""
    before_19 = {"pooling", "normalize", "query_prefix", "passage_prefix", "query_max_length",
                 "passage_max_length", "title_sep"}
    assert set(EncoderConfig().settings()) == before_19
    enc = Encoder.from_pretrained(tiny_model_dir)
    assert set(enc.describe()) == before_19 | {"model", "dim"}


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("wide"), hidden=128)


def test_index_and_search_at_a_truncated_dim(tmp_path, wide_model, capsys):
    data = write_beir(tmp_path / "d")
    idx = tmp_path / "idx"
    code, _, err = run_cli(["index", "-m", wide_model, "-d", data, "-o", idx, "--dim", "32"], capsys)
    assert code == 0, err
    meta = json.loads((idx / "meta.json").read_text())
    assert meta["dim"] == 32 and meta["encoder"]["dim"] == 32 and meta["encoder"]["truncate_dim"] == 32
    from retr.indexing.faiss_index import FaissIndex
    from retr.retriever.search import DenseRetriever

    assert FaissIndex.load(idx).index.d == 32
    retriever = DenseRetriever.load(idx)  # the model and its --dim come from meta.json
    assert retriever.encoder.dim == 32
    assert retriever.search("aspirin heart attack", k=3)
    code, out, err = run_cli(["search", "-i", idx, "-q", "salt and blood pressure", "-k", "2"], capsys)
    assert code == 0, err
    # a query encoder of another dimension: one line, exit 2
    code, _, err = run_cli(["eval", "-m", wide_model, "-d", data, "--index", idx, "--dim", "16"], capsys)
    assert code == 2
    line = one_line_error(err)
    assert "dim=32" in line and "dim=16" in line, err
    for bad in ("0", "500"):
        code, _, err = run_cli(["index", "-m", wide_model, "-d", data, "-o", tmp_path / f"bad{bad}", "--dim", bad],
                               capsys)
        assert code == 2 and "--dim" in one_line_error(err)


def test_matryoshka_training_then_eval_at_dim_64(tmp_path, wide_model, capsys):
    data = write_beir(tmp_path / "d")
    run = tmp_path / "run"
    code, _, err = run_cli(["train", "-m", wide_model, "-d", data, "--split", "test", "-o", run, "-b", "4",
                            "--max-steps", "2", "--save-steps", "0", "--matryoshka-dims", "128", "64", "32"], capsys)
    assert code == 0, err
    assert json.loads((run / "train_config.json").read_text())["matryoshka_dims"] == [128, 64, 32]
    out = tmp_path / "eval.json"
    code, _, err = run_cli(["eval", "-m", run / "model", "-d", data, "--dim", "64", "-o", out, "--index",
                            tmp_path / "idx64"], capsys)
    assert code == 0, err
    record = json.loads(out.read_text())
    assert 0.0 <= record["metrics"]["nDCG@10"] <= 1.0
    assert json.loads((tmp_path / "idx64" / "meta.json").read_text())["dim"] == 64
    # dims longer than the model, and MoCo, are refused in one line
    code, _, err = run_cli(["train", "-m", wide_model, "-d", data, "--split", "test", "-o", tmp_path / "r2",
                            "--matryoshka-dims", "256", "64"], capsys)
    assert code == 2 and "256" in one_line_error(err)
    code, _, err = run_cli(["train", "-m", wide_model, "-d", data, "--split", "test", "-o", tmp_path / "r3",
                            "--matryoshka-dims", "64,x"], capsys)
    assert code == 2 and "whole numbers" in one_line_error(err)


def test_matryoshka_with_moco_is_refused():
    from retr.retriever.training.arguments import TrainConfig

    with pytest.raises(ValueError, match="MoCo"):
        TrainConfig(mode="unsupervised", moco=True, matryoshka_dims=[16])
    TrainConfig(mode="unsupervised", moco=False, matryoshka_dims=[16])

"""Encoder: pooling, normalisation, length-sorted batching, save/load in retr, transformers and sentence-transformers."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import make_tiny_bert
from retr.retriever.modeling import DualEncoder, Encoder, pool

TEXTS = ["short", "a somewhat longer text about heart disease and aspirin",
         "medium length passage here", "x " * 100, "one more"]


def _manual(enc: Encoder, text: str, is_query: bool = False) -> np.ndarray:
    batch = enc.tokenize([text], is_query=is_query)
    with torch.no_grad():
        h = enc.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state[0]
    v = {"mean": h.mean(0), "cls": h[0], "last": h[-1]}[enc.config.pooling]
    if enc.config.normalize:
        v = v / v.norm()
    return v.numpy()


@pytest.mark.parametrize("pooling", ["mean", "cls", "last"])
@pytest.mark.parametrize("normalize", [True, False])
def test_batched_encode_equals_one_by_one(tmp_path, pooling, normalize):
    enc = Encoder.from_pretrained(make_tiny_bert(tmp_path / "m", pooling=pooling, normalize=normalize))
    assert enc.config.pooling == pooling and enc.config.normalize == normalize
    got = enc.encode(TEXTS, batch_size=2)
    want = np.stack([_manual(enc, t) for t in TEXTS])
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert got.dtype == np.float32
    if normalize:
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_pool_mean_ignores_padding():
    h = torch.tensor([[[1.0, 1.0], [3.0, 3.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert torch.allclose(pool(h, mask, "mean"), torch.tensor([[2.0, 2.0]]))
    assert torch.allclose(pool(h, mask, "last"), torch.tensor([[3.0, 3.0]]))
    assert torch.allclose(pool(h, mask, "cls"), torch.tensor([[1.0, 1.0]]))


def test_prefixes_and_lengths(tiny_model_dir):
    enc = Encoder.from_pretrained(tiny_model_dir, query_prefix="query: ", query_max_length=8)
    assert enc.tokenize(["a b c d e f g h i j k"], is_query=True)["input_ids"].shape[1] == 8
    q = enc.encode(["heart"], is_query=True)
    np.testing.assert_allclose(q[0], enc.encode(["query: heart"], is_query=False)[0], atol=1e-6)
    assert not np.allclose(q[0], enc.encode(["heart"], is_query=False)[0])


def test_save_load_in_transformers_and_sentence_transformers(tmp_path, tiny_model_dir):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    enc = Encoder.from_pretrained(tiny_model_dir)
    enc.save(tmp_path / "saved")
    again = Encoder.from_pretrained(tmp_path / "saved")
    ours = again.encode(TEXTS)
    np.testing.assert_allclose(ours, enc.encode(TEXTS), atol=1e-6)
    assert again.fingerprint() == enc.fingerprint()
    AutoModel.from_pretrained(tmp_path / "saved")
    st = SentenceTransformer(str(tmp_path / "saved"), device="cpu")
    np.testing.assert_allclose(st.encode(TEXTS, convert_to_numpy=True), ours, atol=1e-5)


def test_fingerprint_changes_with_weights_and_settings(tiny_model_dir):
    a = Encoder.from_pretrained(tiny_model_dir)
    b = Encoder.from_pretrained(tiny_model_dir, pooling="cls")
    assert a.fingerprint() != b.fingerprint()
    fp = a.fingerprint()
    with torch.no_grad():
        a.model.embeddings.word_embeddings.weight[0, 0] += 1
    assert a.fingerprint() != fp


def test_separate_towers_save_and_load(tmp_path, tiny_model_dir):
    dual = DualEncoder.from_pretrained(tiny_model_dir, separate=True)
    assert not dual.shared
    with torch.no_grad():
        dual.passage_encoder.model.embeddings.word_embeddings.weight.mul_(2)
    dual.save(tmp_path / "dual")
    back = DualEncoder.from_pretrained(tmp_path / "dual")
    assert not back.shared
    np.testing.assert_allclose(back.encode_queries(TEXTS), dual.encode_queries(TEXTS), atol=1e-6)
    np.testing.assert_allclose(back.encode_passages(TEXTS), dual.encode_passages(TEXTS), atol=1e-6)
    assert not np.allclose(back.encode_queries(TEXTS), back.encode_passages(TEXTS))


def test_reads_sentence_transformers_pooling_config(tmp_path, tiny_model_dir):
    import shutil

    d = tmp_path / "st"
    shutil.copytree(tiny_model_dir, d)
    (d / "retr_encoder.json").unlink()
    cfg = json.loads((d / "1_Pooling" / "config.json").read_text())
    cfg.update(pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)
    (d / "1_Pooling" / "config.json").write_text(json.dumps(cfg))
    (d / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 48}))
    enc = Encoder.from_pretrained(d)
    assert enc.config.pooling == "cls" and enc.config.passage_max_length == 48 and enc.config.normalize


def test_empty_input(tiny_model_dir):
    enc = Encoder.from_pretrained(tiny_model_dir)
    assert enc.encode([]).shape == (0, enc.dim)


def test_bf16_autocast_is_close_but_not_identical(tiny_model_dir):
    enc = Encoder.from_pretrained(tiny_model_dir)
    fp32 = enc.encode(TEXTS)
    enc.precision = "bf16"
    bf16 = enc.encode(TEXTS)
    assert bf16.dtype == np.float32
    np.testing.assert_allclose(bf16, fp32, atol=3e-2)
    assert not np.array_equal(bf16, fp32)
    enc.precision = "half-baked"
    with pytest.raises(ValueError, match="precision must be"):
        enc.encode(TEXTS)


def test_encode_in_blocks_equals_one_block(tiny_model_dir):
    """Tokenising block by block (bounded memory) gives the vectors of tokenising everything at once."""
    enc = Encoder.from_pretrained(tiny_model_dir)
    texts = [" ".join(["word"] * (1 + (i * 7) % 40)) + f" {i}" for i in range(50)]
    whole = enc.encode(texts, batch_size=8, block_size=1000)
    blocks = enc.encode(texts, batch_size=8, block_size=7)
    np.testing.assert_allclose(blocks, whole, atol=1e-5)
    np.testing.assert_allclose(enc.encode(texts[13:14]), whole[13:14], atol=1e-5)


def test_max_length_over_positions_is_clamped_with_a_warning(tmp_path, tiny_model_dir, capsys, caplog):
    """Case max-length-over-positions: 1024 on a 128-position model is clamped (and long texts encode)."""
    from conftest import run_cli, write_beir

    enc = Encoder.from_pretrained(tiny_model_dir, passage_max_length=1024, query_max_length=4096)
    assert enc.config.passage_max_length == 128 and enc.config.query_max_length == 128
    assert "more than the model's 128 positions" in caplog.text
    long_doc = [("long", "", " ".join(f"token{i}" for i in range(1400)))]
    data = write_beir(tmp_path / "d", docs=long_doc + [("d2", "", "short")], queries=[("q", "token5")],
                      qrels=[("q", "long", 1)])
    code, _, err = run_cli(["eval", "-m", tiny_model_dir, "-d", data, "--passage-max-length", "1024", "-k", "2",
                            "-o", tmp_path / "m.json"], capsys)
    assert code == 0, err
    code, _, err = run_cli(["eval", "-m", tiny_model_dir, "-d", data, "--passage-max-length", "0"], capsys)
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == "error: retr eval: --passage-max-length: must be at least 1, got 0"

"""Contriever-faithful unsupervised data: the corpus tokenised once, block by block, into a cached memmapped token
stream; Contriever's stream chunks (across documents, random offset per epoch) and retr's per-document chunks as
spans of it; MoCo queue started with random unit vectors; the `retr train` options that choose them."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import DOCS, run_cli, write_beir
from retr.retriever.data import load_corpus
from retr.retriever.data.contriever import (CropConfig, DocumentChunks, StreamChunks, corpus_tokens, make_chunks,
                                            read_text_blocks)
from retr.retriever.data.errors import DataError
from retr.retriever.data.token_store import TokenStore, cached_store
from retr.retriever.losses import MoCoLoss


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_text_blocks_stream_the_corpus_in_blocks(tmp_path):
    data = write_beir(tmp_path / "b")
    blocks = list(read_text_blocks([data], block_size=3))
    assert [len(b) for b in blocks] == [3, 3, 2]
    assert [t for b in blocks for t in b] == load_corpus(data / "corpus.jsonl").passages()  # title + " " + text
    bad = tmp_path / "bad.jsonl"  # a broken last line: the corpus store validates it before any block comes out
    bad.write_text("".join(json.dumps({"_id": str(i), "text": f"t{i}"}) + "\n" for i in range(4)) + "{oops\n")
    with pytest.raises(DataError, match="bad.jsonl:5"):
        next(read_text_blocks([bad], block_size=2))
    txt = tmp_path / "lines.txt"
    txt.write_text("\ufeffone text\n\n  two  \n")
    assert list(read_text_blocks([txt])) == [["one text", "two"]]


def test_store_is_the_concatenated_token_stream_with_document_offsets(tok, tmp_path):
    texts = ["Aspirin reduces the risk", "x", "", "Statins lower cholesterol and risk"]
    store = TokenStore.build([texts[:3], texts[3:]], tok, tmp_path / "s")  # two tokenizer calls
    per_doc = [_ids(tok, t) for t in texts]
    assert store.tokens.dtype == np.int32 and store.offsets.dtype == np.int64
    assert isinstance(store.tokens, np.memmap)
    assert store.tokens.tolist() == [t for ids in per_doc for t in ids]
    assert np.diff(store.offsets).tolist() == [len(x) for x in per_doc]
    assert store.document(3).tolist() == per_doc[3]
    reopened = TokenStore.open(tmp_path / "s")
    assert reopened.tokens.tolist() == store.tokens.tolist() and reopened.num_documents == 4


def test_store_cache_keyed_by_corpus_and_tokenizer(tok, tmp_path, monkeypatch):
    data = write_beir(tmp_path / "d")
    cache = tmp_path / "cache"
    a = corpus_tokens([data], tok, cache)
    with monkeypatch.context() as m:
        m.setattr(TokenStore, "build", lambda *a, **k: pytest.fail("re-tokenised a cached corpus"))
        b = corpus_tokens([data], tok, cache)
    assert b.directory == a.directory and b.tokens.tolist() == a.tokens.tolist()
    write_beir(tmp_path / "d", docs=DOCS[:-1])  # another corpus: another key
    c = corpus_tokens([data], tok, cache)
    assert c.key != a.key and c.num_documents == len(DOCS) - 1
    from transformers import AutoTokenizer

    from retr.retriever.modeling import packaged_minilm_path

    cased = AutoTokenizer.from_pretrained(packaged_minilm_path(), do_lower_case=False)  # other ids: other key
    d = cached_store(lambda: read_text_blocks([data]), [_fp(data)], cased, cache)
    assert d.key not in (a.key, c.key)
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == sorted([a.key, c.key, d.key])


def _fp(path):
    from retr.retriever.data.contriever import file_fingerprints

    return file_fingerprints([path])[0]


def test_stream_chunks_cross_documents_full_length_random_offset_per_epoch():
    tokens = np.arange(1000, dtype=np.int32)  # a stream of 1000 tokens (document boundaries do not matter)
    chunks = StreamChunks(tokens, 64, seed=1)
    assert len(chunks) == (1000 - 63) // 64
    offsets = {chunks.offset(e) for e in range(40)}
    assert len(offsets) > 10 and min(offsets) >= 0 and max(offsets) < 64
    for e in range(3):
        o = chunks.offset(e)
        got = [chunks.get(i, e) for i in range(len(chunks))]
        assert all(len(c) == 64 for c in got)
        assert np.concatenate(got).tolist() == list(range(o, o + 64 * len(chunks)))  # end to end from the offset
    assert chunks.offset(2) == StreamChunks(tokens, 64, seed=1).offset(2)  # reproducible


def test_stream_vs_document_chunks_on_a_store(tok, tmp_path):
    texts = ["alpha beta gamma " * 10, "delta " * 7, "epsilon zeta " * 12]
    store = TokenStore.build([texts], tok, tmp_path / "s")
    cfg = CropConfig(chunk_length=16, min_chunk_tokens=4)
    doc = make_chunks(store, "document", cfg)
    assert isinstance(doc, DocumentChunks)
    bounds = set(store.offsets.tolist())
    for i in range(len(doc)):  # inside one document
        s, e = int(doc.starts[i]), int(doc.ends[i])
        assert not any(s < b < e for b in bounds)
    stream = make_chunks(store, "stream", cfg, seed=0)
    o = stream.offset(0)
    spans = [(o + 16 * i, o + 16 * (i + 1)) for i in range(len(stream))]
    assert any(s < b < e for s, e in spans for b in bounds)  # some chunk spans two documents
    assert len(stream) == (store.num_tokens - min(15, store.num_tokens - 16)) // 16
    with pytest.raises(ValueError, match="chunking"):
        make_chunks(store, "sentence", cfg)


def test_moco_queue_random_init_is_unit_vectors_full_and_seeded():
    a = MoCoLoss(16, queue_size=50, queue_init="random", seed=3)
    assert int(a.queue_len) == 50
    torch.testing.assert_close(a.queue.norm(dim=1), torch.ones(50))
    torch.testing.assert_close(a.queue, MoCoLoss(16, queue_size=50, queue_init="random", seed=3).queue)  # every rank
    assert not torch.equal(a.queue, MoCoLoss(16, queue_size=50, queue_init="random", seed=4).queue)
    empty = MoCoLoss(16, queue_size=50)
    assert int(empty.queue_len) == 0
    q, k = torch.randn(4, 16), torch.randn(4, 16)
    assert a(q, k).item() > empty(q, k).item()  # 50 more negatives in the softmax
    a.enqueue(torch.ones(4, 16))  # FIFO: real keys replace the oldest random ones
    assert a.queue_in_order()[-4:].eq(1).all() and int(a.queue_len) == 50


def test_train_cli_contriever_options(tiny_model_dir, tmp_path, capsys):
    """--chunking stream --queue-init random --no-normalize --token-cache: Contriever's set-up, end to end."""
    from retr.retriever.modeling import DualEncoder

    data = write_beir(tmp_path / "d")
    cache = tmp_path / "tok"
    args = ["train", "--mode", "unsupervised", "-m", tiny_model_dir, "-d", data, "--batch-size", "2", "--max-steps",
            "2", "--save-steps", "1", "--chunk-length", "8", "--queue-size", "6", "--lr", "1e-3"]
    code, _, err = run_cli(args + ["-o", tmp_path / "c", "--chunking", "stream", "--queue-init", "random",
                                   "--no-normalize", "--token-cache", cache], capsys)
    assert code == 0, err
    saved = json.loads((tmp_path / "c" / "train_config.json").read_text())
    assert (saved["chunking"], saved["queue_init"], saved["normalize"]) == ("stream", "random", False)
    stores = [p for p in cache.iterdir() if not p.name.startswith(".")]  # (.KEY.lock: the writer lock)
    assert len(stores) == 1 and (stores[0] / "tokens.bin").exists()
    task = load_file(str(tmp_path / "c" / "checkpoints" / "step-1" / "task.safetensors"))
    assert int(task["loss.queue_len"]) == 6  # the queue started full (random unit vectors)
    vecs = DualEncoder.from_pretrained(tmp_path / "c" / "model").encode_passages(["a text", "another text"])
    assert not np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-3)  # raw dot product: not normalised
    # retr's set-up: per-document chunks, an empty queue, cosine
    code, _, err = run_cli(args + ["-o", tmp_path / "r", "--chunking", "document", "--queue-init", "empty",
                                   "--normalize", "--token-cache", cache], capsys)
    assert code == 0, err
    assert len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 1  # the same tokens, reused
    task = load_file(str(tmp_path / "r" / "checkpoints" / "step-1" / "task.safetensors"))
    assert int(task["loss.queue_len"]) == 2  # one batch of real keys
    vecs = DualEncoder.from_pretrained(tmp_path / "r" / "model").encode_passages(["a text", "another text"])
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    code, _, err = run_cli(args + ["-o", tmp_path / "x", "--chunking", "sentence"], capsys)
    assert code == 2 and "chunking must be stream or document" in err
    code, _, err = run_cli(args + ["-o", tmp_path / "x", "--queue-init", "zeros"], capsys)
    assert code == 2 and "queue_init must be random or empty" in err
    (tmp_path / "file").write_text("")
    code, _, err = run_cli(args + ["-o", tmp_path / "x", "--token-cache", tmp_path / "file"], capsys)
    assert code == 2 and "is not a directory" in err and "Traceback" not in err


def test_chunking_choice_reaches_the_crops(tiny_model_dir, tmp_path):
    """With stream chunks every chunk is full length; with document chunks a short corpus gives short ones."""
    from retr.retriever.training.arguments import TrainConfig
    from retr.retriever.training.driver import build_trainer

    data = write_beir(tmp_path / "d")
    lengths = {}
    for chunking in ("stream", "document"):
        cfg = TrainConfig(output_dir=str(tmp_path / chunking), mode="unsupervised", model=str(tiny_model_dir),
                          train_data=[str(data)], batch_size=2, chunk_length=16, chunking=chunking, max_steps=1,
                          save_steps=0, token_cache=str(tmp_path / "tok"))
        pairs = build_trainer(cfg).collate.pairs
        lengths[chunking] = [len(pairs.chunks.get(i, 0)) for i in range(len(pairs))]
    assert set(lengths["stream"]) == {16}
    assert min(lengths["document"]) < 16 and len(lengths["document"]) == len(DOCS)  # one chunk per short doc

"""Decoder embedders (issue 19) on tiny Qwen2 / Llama models with a locally built tokenizer: EOS appended exactly
once (also under truncation and after save/load), last-token pooling is the EOS position's hidden state under
right and left padding, instructions go to queries only and are saved as the sentence-transformers prompt
"query", ``--torch-dtype bf16`` loads half-precision weights."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import one_line_error, run_cli, write_beir
from retr.retriever.modeling import Encoder
from retr.retriever.modeling.decoder import format_instruction

TEXTS = ["short", "a somewhat longer text about heart disease and aspirin", "medium length passage", "salt"]


def test_eos_appended_exactly_once(tiny_decoder_dir, tmp_path):
    from transformers import AutoTokenizer

    raw = AutoTokenizer.from_pretrained(tiny_decoder_dir, trust_remote_code=False)
    eos = raw.eos_token_id
    assert raw("hello world")["input_ids"][-1] != eos  # the tokenizer itself adds none
    enc = Encoder.from_pretrained(tiny_decoder_dir, pooling="last", query_max_length=6)
    assert enc.config.append_eos
    batch = enc.tokenize(TEXTS, is_query=True)
    for text, ids, mask in zip(TEXTS, batch["input_ids"], batch["attention_mask"]):
        real = ids[mask.bool()].tolist()
        assert real[-1] == eos and real.count(eos) == 1
        assert real[:-1] == raw(text)["input_ids"][:5]  # the tokenizer's own ids (and BOS), then EOS
    long_ids = enc.tokenize(["a b c d e f g h i j"], is_query=True)["input_ids"][0].tolist()
    assert len(long_ids) == 6 and long_ids[-1] == eos and long_ids.count(eos) == 1  # truncation keeps the EOS
    if raw.bos_token_id is not None and raw("x")["input_ids"][0] == raw.bos_token_id:  # Llama: BOS kept
        assert long_ids[0] == raw.bos_token_id
    enc.save(tmp_path / "saved")  # reloading does not add a second one, and transformers sees the same ids
    again = Encoder.from_pretrained(tmp_path / "saved")
    ids = again.tokenize(["hello world"], is_query=False)["input_ids"][0].tolist()
    assert ids.count(eos) == 1 and ids[-1] == eos
    assert AutoTokenizer.from_pretrained(tmp_path / "saved", trust_remote_code=False)("hello world")["input_ids"] == ids
    assert again.fingerprint() == enc.fingerprint()


def _eos_hidden(enc: Encoder, text: str) -> torch.Tensor:
    batch = enc.tokenizer([text], return_tensors="pt")
    assert batch["input_ids"][0, -1] == enc.tokenizer.eos_token_id
    with torch.no_grad():
        return enc.model(**batch).last_hidden_state[0, -1]


@pytest.mark.parametrize("side", ["right", "left"])
def test_last_token_pooling_is_the_eos_hidden_state(tiny_decoder_dir, side):
    enc = Encoder.from_pretrained(tiny_decoder_dir, pooling="last", normalize=False)
    enc.tokenizer.padding_side = side
    batch = enc.tokenize(TEXTS, is_query=False)
    mask = batch["attention_mask"]
    assert not bool(mask.all())  # the batch really is padded, on the chosen side
    assert bool((mask[:, -1] if side == "left" else mask[:, 0]).all())
    with torch.no_grad():
        pooled = enc(**batch)
    want = torch.stack([_eos_hidden(enc, t) for t in TEXTS])
    torch.testing.assert_close(pooled, want, atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(enc.encode(TEXTS, batch_size=3), want.numpy(), atol=1e-5)


def test_instruction_on_queries_only_and_saved_as_the_sentence_transformers_prompt(tiny_decoder_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    prefix = format_instruction("Instruct: {task}\\nQuery: ", "find the medical passage")
    assert prefix == "Instruct: find the medical passage\nQuery: "
    plain = Encoder.from_pretrained(tiny_decoder_dir, pooling="last")
    enc = Encoder.from_pretrained(tiny_decoder_dir, pooling="last", query_prefix=prefix)
    queries = ["does aspirin prevent heart attacks", "salt"]
    np.testing.assert_allclose(enc.encode(TEXTS), plain.encode(TEXTS), atol=1e-6)  # passages untouched
    q = enc.encode(queries, is_query=True)
    assert not np.allclose(q, plain.encode(queries, is_query=True), atol=1e-3)
    np.testing.assert_allclose(q, plain.encode([prefix + t for t in queries]), atol=1e-5)
    enc.save(tmp_path / "saved")
    prompts = json.loads((tmp_path / "saved" / "config_sentence_transformers.json").read_text())["prompts"]
    assert prompts == {"query": prefix}
    st = SentenceTransformer(str(tmp_path / "saved"), device="cpu", trust_remote_code=False)
    np.testing.assert_allclose(st.encode(queries, prompt_name="query", convert_to_numpy=True), q, atol=1e-5)
    np.testing.assert_allclose(st.encode(TEXTS, convert_to_numpy=True), enc.encode(TEXTS), atol=1e-5)


def test_instruction_flags_on_the_command_line(tiny_decoder_dir, tmp_path, capsys):
    data = write_beir(tmp_path / "d")
    idx = tmp_path / "idx"
    code, _, err = run_cli(["index", "-m", tiny_decoder_dir, "-d", data, "-o", idx, "--pooling", "last",
                            "--query-instruction", "Instruct: {task}\\nQuery: ", "--task", "find it"], capsys)
    assert code == 0, err
    encoder = json.loads((idx / "meta.json").read_text())["encoder"]
    assert encoder["query_prefix"] == "Instruct: find it\nQuery: " and encoder["append_eos"] is True
    for args, words in ((["--query-instruction", "Instruct: {task}\\nQuery: "], "--task"),
                        (["--task", "x"], "--query-instruction"),
                        (["--query-instruction", "Q: ", "--query-prefix", "q: "], "not both")):
        code, _, err = run_cli(["index", "-m", tiny_decoder_dir, "-d", data, "-o", tmp_path / "bad", *args], capsys)
        assert code == 2 and words in one_line_error(err)


def test_torch_dtype_bf16(tiny_decoder_dir, tmp_path, capsys):
    full = Encoder.from_pretrained(tiny_decoder_dir, pooling="last")
    half = Encoder.from_pretrained(tiny_decoder_dir, pooling="last", torch_dtype="bf16")
    assert next(half.model.parameters()).dtype == torch.bfloat16
    assert half.describe()["torch_dtype"] == "bf16" and "torch_dtype" not in full.describe()
    a, b = full.encode(TEXTS), half.encode(TEXTS)
    assert b.dtype == np.float32 and np.abs(a - b).max() < 5e-2 and not np.array_equal(a, b)
    data = write_beir(tmp_path / "d")
    code, _, err = run_cli(["index", "-m", tiny_decoder_dir, "-d", data, "-o", tmp_path / "i", "--pooling", "last",
                            "--torch-dtype", "int4"], capsys)
    assert code == 2 and "--torch-dtype" in one_line_error(err)

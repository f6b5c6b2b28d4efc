"""LoRA via peft (issue 19), on tiny random-init Qwen2 / BERT models built offline: an adapter round-trips (save ->
load in retr, in PEFT, and merged -> the same embeddings), GradCache + LoRA + gradient checkpointing gives the
full-batch gradients with dropout on, a resumed LoRA run equals the uninterrupted one, a cross-encoder trains a
LoRA adapter plus its head, and `retr train --lora-*` -> `retr eval` runs end to end with every option seen in
its result."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import make_tiny_bert, make_tiny_decoder, one_line_error, run_cli, write_beir
from retr.retriever.modeling import DualEncoder, Encoder
from retr.retriever.modeling.cross_encoder import CrossEncoder
from retr.retriever.modeling.hf_switches import gradient_checkpointing_on
from retr.retriever.modeling.lora import (ADAPTER_CONFIG, ADAPTER_WEIGHTS, MERGED_DIR, LoraSettings, add_lora,
                                          is_adapter_dir, save_merged)
from retr.retriever.training.arguments import TrainConfig
from retr.retriever.training.driver import build_trainer

peft = pytest.importorskip("peft")

TEXTS = ["short", "a somewhat longer text about heart disease and aspirin", "medium length passage", "salt"]


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return make_tiny_decoder(tmp_path_factory.mktemp("lora-qwen2"), "qwen2", dropout=0.2)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("lora-bert"), dropout=0.2)


def _perturb_lora_b(model, seed=0):
    """LoRA starts with B = 0 (the base model); give B values so the adapter changes the embeddings and A gets
    gradients."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _max_diff(a, b):
    assert a.keys() == b.keys() and a
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_adapter_round_trips_through_retr_peft_and_merge(qwen_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModel

    model = DualEncoder.from_pretrained(qwen_dir, pooling="last")
    base_vectors = model.encode_passages(TEXTS)
    add_lora(model, LoraSettings(r=4, alpha=8, dropout=0.1, target_modules=["q_proj", "v_proj"]), seed=0)
    _perturb_lora_b(model)
    trained = model.encode_passages(TEXTS)
    assert np.abs(trained - base_vectors).max() > 1e-2  # the adapter changes the embeddings
    model.save(tmp_path / "adapter")
    saved = tmp_path / "adapter"
    assert is_adapter_dir(saved) and not (saved / "model.safetensors").exists()
    cfg = json.loads((saved / ADAPTER_CONFIG).read_text())
    assert cfg["base_model_name_or_path"] == str(qwen_dir.resolve()) and cfg["r"] == 4 and cfg["lora_alpha"] == 8
    assert all("lora_" in k for k in load_file(str(saved / ADAPTER_WEIGHTS)))  # only the adapter is stored

    again = DualEncoder.from_pretrained(saved)  # retr: base from the adapter config, settings from the directory
    assert again.query_encoder.config.pooling == "last"
    np.testing.assert_allclose(again.encode_passages(TEXTS), trained, atol=1e-6)
    assert again.fingerprint() == model.fingerprint()

    # PEFT itself, from the same directory: the EOS-terminated sequence's last hidden state, normalised
    tok = again.query_encoder.tokenizer
    hf = PeftModel.from_pretrained(AutoModel.from_pretrained(qwen_dir), str(saved)).eval()
    rows = []
    with torch.no_grad():
        for text in TEXTS:
            batch = tok([text], return_tensors="pt")
            assert batch["input_ids"][0, -1] == tok.eos_token_id
            rows.append(torch.nn.functional.normalize(hf(**batch).last_hidden_state[0, -1], dim=-1))
    np.testing.assert_allclose(torch.stack(rows).numpy(), trained, atol=1e-5)

    from sentence_transformers import SentenceTransformer  # loads the adapter directory through transformers

    st = SentenceTransformer(str(saved), device="cpu", trust_remote_code=False)
    np.testing.assert_allclose(st.encode(TEXTS, convert_to_numpy=True), trained, atol=1e-5)

    save_merged(saved, tmp_path / "merged", DualEncoder)  # a plain directory, loads without peft
    assert (tmp_path / "merged" / "model.safetensors").exists() and not (tmp_path / "merged" / ADAPTER_CONFIG).exists()
    merged = Encoder.from_pretrained(tmp_path / "merged")
    assert type(merged.model).__name__ == "Qwen2Model"
    np.testing.assert_allclose(merged.encode(TEXTS), trained, atol=1e-5)


def test_adapter_directory_problems_are_one_line(qwen_dir, tmp_path):
    from retr.retriever.modeling.safe_load import ModelLoadError

    model = DualEncoder.from_pretrained(qwen_dir, pooling="last")
    add_lora(model, LoraSettings(r=2), seed=0)
    model.save(tmp_path / "a")
    cfg = json.loads((tmp_path / "a" / ADAPTER_CONFIG).read_text())
    shutil.copytree(tmp_path / "a", tmp_path / "moved")
    (tmp_path / "moved" / ADAPTER_CONFIG).write_text(json.dumps({**cfg, "base_model_name_or_path": "/nowhere/base"}))
    with pytest.raises(ModelLoadError, match="base_model_name_or_path '/nowhere/base' not found"):
        DualEncoder.from_pretrained(tmp_path / "moved")
    # weights of fewer layers than the config names (peft would leave the others at their initial values)
    from safetensors.torch import load_file, save_file

    shutil.copytree(tmp_path / "a", tmp_path / "partial")
    tensors = load_file(tmp_path / "partial" / ADAPTER_WEIGHTS)
    save_file({k: v for k, v in tensors.items() if "layers.1." not in k}, tmp_path / "partial" / ADAPTER_WEIGHTS)
    with pytest.raises(ModelLoadError, match="does not match adapter_config.json: .* missing"):
        DualEncoder.from_pretrained(tmp_path / "partial")
    weights = tmp_path / "a" / ADAPTER_WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-7])  # truncated
    with pytest.raises(Exception, match=ADAPTER_WEIGHTS):
        DualEncoder.from_pretrained(tmp_path / "a")


@pytest.mark.parametrize("arch", ["qwen2", "bert"])
def test_grad_cache_lora_checkpointing_equals_full_batch_step(arch, qwen_dir, bert_dir, tmp_path):
    """Dropout on in the model and in the adapters. The plain step and GradCache + activation checkpointing see the
    same masks (replayed twice: the GradCache second forward, then the blocks' recomputation): same gradients."""
    path = qwen_dir if arch == "qwen2" else bert_dir
    data = write_beir(tmp_path / "d")
    common = dict(output_dir=str(tmp_path / "o"), model=str(path), train_data=[str(data)], train_split="test",
                  batch_size=4, max_steps=1, save_steps=0, train_negatives=1, lora_r=4, lora_dropout=0.3,
                  pooling="last" if arch == "qwen2" else None)

    def grads(cfg, torch_seed=0):
        torch.manual_seed(torch_seed)
        trainer = build_trainer(cfg)
        assert gradient_checkpointing_on(trainer.model.query_encoder.model) == cfg.gradient_checkpointing
        _perturb_lora_b(trainer.model)
        loss = trainer.compute_gradients(trainer.collate(trainer.sampler.batches(0)[0], 0))
        return loss, _grads(trainer.model)

    loss_a, plain = grads(TrainConfig(**common))
    assert plain and all("lora_" in k for k in plain)  # the base model is frozen
    assert any("lora_A" in k and v.abs().max() > 0 for k, v in plain.items())
    # chunks of the whole batch draw the plain step's masks (a mask depends on the shape it is drawn for)
    loss_b, both = grads(TrainConfig(gradient_checkpointing=True, grad_cache=True, gc_query_chunk=4,
                                     gc_passage_chunk=8, **common))
    assert loss_a == pytest.approx(loss_b, abs=1e-6)
    assert _max_diff(plain, both) <= 1e-5
    _, other = grads(TrainConfig(**common), torch_seed=1)  # other dropout masks, other gradients
    assert _max_diff(plain, other) > 1e-4


def test_chunked_grad_cache_with_lora_and_checkpointing_equals_the_chunked_graph(qwen_dir):
    """Smaller chunks (3): GradCache + checkpointing equals the full-batch graph built from the same chunks without
    either (the masks GradCache's first pass draws), and breaks when the blocks do not preserve the RNG state."""
    from test_gradient_checkpointing import _cached, _model, _reference

    def lora_model(checkpointing, kwargs=None):
        model = _model(qwen_dir, checkpointing, kwargs)
        add_lora(model, LoraSettings(r=4, dropout=0.3), seed=0)
        _perturb_lora_b(model)
        model.train()
        return model

    ref = _reference(lora_model(False), seed=3)
    assert ref and all("lora_" in k for k in ref)
    assert _max_diff(ref, _cached(lora_model(True), seed=3)) <= 1e-5
    broken = _cached(lora_model(True, {"use_reentrant": False, "preserve_rng_state": False}), seed=3)
    assert _max_diff(ref, broken) > 1e-4


def test_lora_resume_is_exact(qwen_dir, tmp_path):
    data = write_beir(tmp_path / "d")
    common = dict(model=str(qwen_dir), pooling="last", train_data=[str(data)], train_split="test", batch_size=4,
                  max_steps=4, save_steps=2, lr=5e-3, seed=2, lora_r=4, lora_dropout=0.3, grad_cache=True,
                  gc_query_chunk=2, gc_passage_chunk=3)
    straight = build_trainer(TrainConfig(output_dir=str(tmp_path / "a"), **common))
    straight.train()
    build_trainer(TrainConfig(output_dir=str(tmp_path / "b"), **common)).train()
    ckpt = tmp_path / "b" / "checkpoints" / "step-2"
    assert is_adapter_dir(ckpt / "model")  # checkpoints hold the adapter, not a copy of the base model
    shutil.rmtree(tmp_path / "b" / "model")  # as if killed after the step-2 checkpoint
    resumed = build_trainer(TrainConfig(output_dir=str(tmp_path / "b"), resume=True, **common))
    resumed.train()
    assert resumed.resumed_from == ckpt
    a = load_file(str(tmp_path / "a" / "model" / ADAPTER_WEIGHTS))
    b = load_file(str(tmp_path / "b" / "model" / ADAPTER_WEIGHTS))
    start = load_file(str(ckpt / "model" / ADAPTER_WEIGHTS))
    assert a.keys() == b.keys() and any("lora_B" in k for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    assert max((a[k] - start[k]).abs().max().item() for k in a) > 1e-4  # steps 3-4 did move the adapter


def test_cross_encoder_lora_trains_adapter_and_head(bert_dir, tmp_path):
    data = write_beir(tmp_path / "d")
    cfg = TrainConfig(output_dir=str(tmp_path / "ce"), mode="reranker", model=str(bert_dir), train_data=[str(data)],
                      train_split="test", batch_size=4, max_steps=2, save_steps=0, lr=1e-2, lora_r=4,
                      head_lr=5e-2, merge_lora=True)
    trainer = build_trainer(cfg)
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "classifier" in n for n in trainable)
    assert trainer.model.fresh_parameters and all(n in trainable for n in trainer.model.fresh_parameters)
    head_lrs = {g["lr"] for g in trainer.optimizer.param_groups}
    assert head_lrs == {1e-2, 5e-2}  # --head-lr still reaches the (wrapped) fresh head
    trainer.train()
    queries, passages = ["aspirin heart"] * 3, ["Aspirin reduces heart attacks.", "Salt and blood", "Sleep"]
    want = trainer.model.score(queries, passages)
    loaded = CrossEncoder.from_pretrained(tmp_path / "ce" / "model")
    assert is_adapter_dir(tmp_path / "ce" / "model")
    np.testing.assert_allclose(loaded.score(queries, passages), want, atol=1e-5)
    merged = CrossEncoder.from_pretrained(tmp_path / "ce" / MERGED_DIR)
    assert type(merged.model).__name__ == "BertForSequenceClassification"
    np.testing.assert_allclose(merged.score(queries, passages), want, atol=1e-5)


def test_train_lora_cli_then_eval_end_to_end(qwen_dir, tmp_path, capsys):
    """A decoder embedder through the CLI: `retr train --lora-*` -> `retr eval` on the adapter and on the merged
    model (same metrics); each LoRA option visible in what was saved."""
    data = write_beir(tmp_path / "d")
    out = tmp_path / "run"
    code, _, err = run_cli(["train", "-o", out, "-m", qwen_dir, "-d", data, "--split", "test", "--pooling", "last",
                            "--batch-size", "4", "--max-steps", "3", "--lr", "5e-3", "--save-steps", "0",
                            "--lora-r", "4", "--lora-alpha", "16", "--lora-dropout", "0.05",
                            "--lora-target-modules", "q_proj,k_proj,v_proj,o_proj", "--merge-lora",
                            "--gradient-checkpointing", "--grad-cache", "--gc-query-chunk", "2"], capsys)
    assert code == 0, err
    cfg = json.loads((out / "model" / ADAPTER_CONFIG).read_text())
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 16 and cfg["lora_dropout"] == 0.05
    assert sorted(cfg["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    meta = json.loads((out / "meta.json").read_text())
    params = meta["parameters"]
    # 2 layers x 4 modules of rank 4: q,o [32x32]; k,v [16x32] (one KV head of 16) -> r*(in+out) each
    assert params["trainable"] == 2 * 4 * (2 * (32 + 32) + 2 * (32 + 16)) and params["total"] > 10 * params["trainable"]
    assert (out / MERGED_DIR / "model.safetensors").exists()
    results = {}
    for name in ("model", MERGED_DIR):
        code, _, err = run_cli(["eval", "-m", out / name, "-d", data, "-o", tmp_path / f"{name}.json"], capsys)
        assert code == 0, err
        results[name] = json.loads((tmp_path / f"{name}.json").read_text())["metrics"]
    assert results["model"]["nDCG@10"] == pytest.approx(results[MERGED_DIR]["nDCG@10"], abs=1e-6)
    code, _, err = run_cli(["eval", "-m", qwen_dir, "--pooling", "last", "-d", data, "-o", tmp_path / "base.json"],
                           capsys)
    assert code == 0, err


@pytest.mark.parametrize("args,words", [
    (["--lora-alpha", "8"], "--lora-alpha needs --lora-r"),
    (["--merge-lora"], "--merge-lora needs --lora-r"),
    (["--lora-r", "4", "--lora-dropout", "1.5"], "--lora-dropout must be in [0, 1)"),
    (["--lora-r", "4", "--lora-alpha", "-1"], "--lora-alpha must be more than 0"),
    (["--lora-r", "-2"], "--lora-r"),
    (["--lora-r", "4", "--lora-target-modules", "no_such_layer"], "--lora-target-modules"),
    (["--lora-dropout", "0.1"], "--lora-dropout needs --lora-r"),
    (["--lora-r", "4", "--lora-target-modules", "q_proj,bogus"], "bogus match no module"),
])
def test_bad_lora_options_are_one_line_errors(args, words, qwen_dir, tmp_path, capsys):
    data = write_beir(tmp_path / "d")
    code, _, err = run_cli(["train", "-o", tmp_path / "o", "-m", qwen_dir, "-d", data, "--split", "test",
                            "--max-steps", "1", "--batch-size", "4", *args], capsys)
    assert code == 2 and words in one_line_error(err)


def test_an_adapter_as_starting_model_is_refused(qwen_dir, tmp_path):
    model = DualEncoder.from_pretrained(qwen_dir, pooling="last")
    add_lora(model, LoraSettings(r=2), seed=0)
    model.save(tmp_path / "a")
    data = write_beir(tmp_path / "d")
    with pytest.raises(ValueError, match="is a LoRA adapter"):
        build_trainer(TrainConfig(output_dir=str(tmp_path / "o"), model=str(tmp_path / "a"), train_data=[str(data)],
                                  train_split="test", batch_size=4, max_steps=1))


def test_b3_batches_with_lora(bert_dir, tmp_path):
    """B3 mines with its own (plain) teacher; the student trains LoRA adapters on the B3 batches."""
    from retr.retriever.training.b3 import B3BatchSampler

    data = write_beir(tmp_path / "d")
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), model=str(bert_dir), train_data=[str(data)],
                      train_split="test", batch_size=4, max_steps=2, batching="b3", b3_teacher=str(bert_dir),
                      b3_p=1, b3_m=3, b3_cluster_size=2, b3_cache=str(tmp_path / "cache"), pairs=True,
                      save_steps=0, lr=1e-2, lora_r=4)
    trainer = build_trainer(cfg)
    assert isinstance(trainer.sampler, B3BatchSampler)
    assert trainer.train()["steps"] == 2
    weights = load_file(str(tmp_path / "run" / "model" / ADAPTER_WEIGHTS))
    assert max(v.abs().max().item() for k, v in weights.items() if "lora_B" in k) > 0  # B left its zero init


def test_lora_options_from_a_config_file(tmp_path):
    (tmp_path / "c.yaml").write_text("lora_r: 8\nlora_target_modules: q_proj, v_proj\nmerge_lora: true\n")
    cfg = TrainConfig.from_file(tmp_path / "c.yaml", lora_alpha=4.0)
    settings = cfg.lora_settings()
    assert (settings.r, settings.alpha, settings.target_modules) == (8, 4.0, ["q_proj", "v_proj"]) and cfg.merge_lora
    assert TrainConfig().lora_settings() is None  # lora_r 0: full fine-tuning

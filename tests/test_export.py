"""Issue 22: `retr export` (ONNX / OpenVINO graphs, Parquet / JSONL vectors, parity in meta.json), `--backend
onnx|openvino` on encode/index/eval/search, and `retr serve` refusing what `retr search` refuses.

References are computed here independently of the code under test: retr's torch forward (the tower's own
``forward`` on hand-tokenised batches) for vectors, onnxruntime / openvino opened directly on the exported files
(without retr) for the graphs, pyarrow / json for the written vector files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import QUERIES, make_tiny_bert, one_line_error, run_cli, write_beir

TEXTS = ["aspirin and heart attacks", "a much longer sentence about statins, cholesterol and the risk of stroke "
         "in adults over sixty", "x", "vitamin d and bone fractures in older women"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    # dropout off: vectors do not depend on train/eval mode; cls pooling + --dim truncation are exported too
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-export"), seed=3, dropout=0.0)


@pytest.fixture(scope="module")
def beir(tmp_path_factory) -> Path:
    return write_beir(tmp_path_factory.mktemp("beir-export"))


def torch_vectors(model: Path, texts: list[str], is_query: bool = False, **overrides) -> np.ndarray:
    """Reference: retr's torch forward, one text at a time (no padding at all)."""
    from retr.retriever.modeling import Encoder

    enc = Encoder.from_pretrained(model, **overrides)
    prefix = enc.config.query_prefix if is_query else enc.config.passage_prefix
    length = enc.config.query_max_length if is_query else enc.config.passage_max_length
    rows = []
    with torch.no_grad():
        for t in texts:
            tok = enc.tokenizer([prefix + t], truncation=True, max_length=length, return_tensors="pt",
                                return_token_type_ids=False)
            rows.append(enc(tok["input_ids"], tok["attention_mask"]).numpy()[0])
    return np.stack(rows)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_onnx_export_runs_without_retr_and_matches_torch(model_dir, beir, tmp_path, capsys):
    out = tmp_path / "onnx"
    code, stdout, err = run_cli(["export", "-m", model_dir, "-o", out, "-d", beir, "--parity-docs", "6",
                                 "--parity-queries", "3"], capsys)
    assert code == 0, err
    meta = json.loads((out / "meta.json").read_text())
    assert meta["format"] == "onnx" and meta["quantize"] is None
    import onnx

    ops = {(n.domain, n.op_type) for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert meta["ort_fused"] is True and ("com.microsoft", "Attention") in ops  # ORT's fused BERT attention
    assert meta["parity"]["passages"] == 6 and meta["parity"]["queries"] == 3  # the sample options, by result
    assert meta["parity"]["cosine_min"] >= 0.9999 and meta["parity"]["top10_overlap"] == 1.0
    assert "cosine min" in stdout
    # the graph alone (onnxruntime + the tokenizer beside it, no retr, no torch model): pooling and norm inside
    import onnxruntime as ort
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    enc = tok(TEXTS, padding=True, truncation=True, max_length=64, return_tensors="np", return_token_type_ids=False)
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input_ids": enc["input_ids"].astype(np.int64),
                          "attention_mask": enc["attention_mask"].astype(np.int64)})[0]
    ref = torch_vectors(model_dir, TEXTS)
    assert got.shape == ref.shape
    assert cosines(got, ref).min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # normalised in the graph


def test_graph_holds_cls_pooling_truncation_and_prompts(tmp_path, capsys):
    model = make_tiny_bert(tmp_path / "m", seed=5, pooling="cls", normalize=False, dropout=0.0)
    out = tmp_path / "e"
    # the prompt and --dim are stored with the model the export reads (settings of the source directory)
    cfg = json.loads((model / "retr_encoder.json").read_text())
    cfg.update(query_prefix="query: ", truncate_dim=16)
    (model / "retr_encoder.json").write_text(json.dumps(cfg))
    code, _, err = run_cli(["export", "-m", model, "-o", out], capsys)
    assert code == 0, err
    meta = json.loads((out / "meta.json").read_text())
    assert meta["encoder"]["query_prefix"] == "query: " and meta["encoder"]["dim"] == 16
    assert meta["encoder"]["pooling"] == "cls" and meta["encoder"]["normalize"] is False
    prompts = json.loads((out / "config_sentence_transformers.json").read_text())["prompts"]
    assert prompts == {"query": "query: "}
    from retr.retriever.modeling import DualEncoder

    enc = DualEncoder.from_pretrained(out)
    enc.set_backend("onnx")
    got = enc.encode_queries(TEXTS)
    ref = torch_vectors(model, TEXTS, is_query=True)
    assert got.shape == (len(TEXTS), 16)
    assert cosines(got, ref).min() >= 0.9999
    assert not np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-3)  # no normalisation when the model has none


def _has_cxx() -> bool:
    import os
    import shutil

    return any(shutil.which(c) for c in (os.environ.get("CXX") or "g++", "c++", "clang++"))


needs_cxx = pytest.mark.skipif(not _has_cxx(), reason="--backend compile needs a C++ compiler (inductor)")


@pytest.mark.parametrize("backend", ["onnx", "openvino", pytest.param("compile", marks=needs_cxx)])
def test_backend_encodes_equal_vectors(model_dir, backend):
    from retr.retriever.modeling import DualEncoder

    enc = DualEncoder.from_pretrained(model_dir)
    enc.set_backend(backend)
    assert enc.query_encoder.runner is not None and enc.query_encoder.runner.kind == backend
    texts = TEXTS * 5  # several batches of mixed lengths
    got = enc.encode_passages(texts, batch_size=3)
    ref = torch_vectors(model_dir, texts)
    assert cosines(got, ref).min() >= 0.9999
    np.testing.assert_allclose(got, ref, atol=1e-4)
    enc.set_backend("torch")
    assert enc.query_encoder.runner is None


def test_int8_and_openvino_exports(model_dir, beir, tmp_path, capsys):
    fp32, int8, ov = tmp_path / "fp32", tmp_path / "int8", tmp_path / "ov"
    for out, extra in ((fp32, []), (int8, ["--quantize", "int8"]), (ov, ["--format", "openvino"])):
        code, _, err = run_cli(["export", "-m", model_dir, "-o", out, "-d", beir, *extra], capsys)
        assert code == 0, err
    m8 = json.loads((int8 / "meta.json").read_text())
    assert m8["quantize"] == "int8"
    import onnx

    ops = {n.op_type for n in onnx.load(str(int8 / "model.onnx")).graph.node}
    assert ops & {"DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul"}, ops  # int8 weights really
    assert (int8 / "model.onnx").stat().st_size < (fp32 / "model.onnx").stat().st_size
    assert 0.9 < m8["parity"]["cosine_min"] < 1.0  # measured, not exact
    mov = json.loads((ov / "meta.json").read_text())
    assert mov["format"] == "openvino" and mov["precision"] == "f32" and mov["parity"]["cosine_min"] >= 0.9999
    assert (ov / "openvino_model.xml").exists() and (ov / "openvino_model.bin").exists()
    import openvino as ov_rt

    core = ov_rt.Core()
    compiled = core.compile_model(core.read_model(str(ov / "openvino_model.xml")), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32"})
    from transformers import AutoTokenizer

    enc = AutoTokenizer.from_pretrained(ov)(TEXTS, padding=True, return_tensors="np", return_token_type_ids=False)
    got = compiled({"input_ids": enc["input_ids"].astype(np.int64),
                    "attention_mask": enc["attention_mask"].astype(np.int64)})[0]
    assert cosines(np.asarray(got), torch_vectors(model_dir, TEXTS)).min() >= 0.9999
    from retr.retriever.modeling import DualEncoder

    enc = DualEncoder.from_pretrained(ov)  # -m OV_EXPORT --backend openvino runs the saved IR
    enc.set_backend("openvino")
    assert enc.query_encoder.runner.path.name == "openvino_model.xml"
    assert cosines(enc.encode_passages(TEXTS), torch_vectors(model_dir, TEXTS)).min() >= 0.9999
    # --precision bf16 applies to the openvino graph (its parity is measured with the bf16 hint)
    code, _, err = run_cli(["export", "-m", model_dir, "-o", tmp_path / "ovbf", "--format", "openvino",
                            "--precision", "bf16"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "ovbf" / "meta.json").read_text())["precision"] == "bf16"


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_vector_export_round_trip(model_dir, beir, tmp_path, capsys, fmt):
    out = tmp_path / fmt
    code, stdout, err = run_cli(["export", "-m", model_dir, "-o", out, "-d", beir, "--format", fmt,
                                 "--include-text", "--block-size", "3", "--batch-size", "2"], capsys)
    assert code == 0, err
    docs = [json.loads(line) for line in (beir / "corpus.jsonl").read_text().splitlines()]
    passages = [(d["title"] + " " + d["text"]).strip() if d["title"] else d["text"] for d in docs]
    if fmt == "parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(out / "vectors.parquet")
        assert pf.num_row_groups == 3  # one row group per --block-size block: 8 docs in blocks of 3
        table = pf.read()
        ids, texts = table.column("id").to_pylist(), table.column("text").to_pylist()
        vectors = np.asarray(table.column("vector").to_pylist(), dtype=np.float32)
    else:
        rows = [json.loads(line) for line in (out / "vectors.jsonl").read_text().splitlines()]
        ids, texts = [r["id"] for r in rows], [r["text"] for r in rows]
        vectors = np.asarray([r["vector"] for r in rows], dtype=np.float32)
    assert ids == [d["_id"] for d in docs]
    assert texts == passages
    np.testing.assert_allclose(vectors, torch_vectors(model_dir, passages), atol=1e-5)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["count"] == len(docs) and meta["dim"] == 32 and meta["parity"]["cosine_min"] >= 0.9999
    assert meta["columns"] == ["id", "vector", "text"]
    assert meta["encoding"]["batch_size"] == 2 and meta["encoding"]["block_size"] == 3 and "backend" not in meta["encoding"]
    # without --include-text there is no text; --backend onnx vectors carry the backend in the meta
    code, _, err = run_cli(["export", "-m", model_dir, "-o", tmp_path / "b", "-d", beir, "--format", fmt,
                            "--backend", "onnx"], capsys)
    assert code == 0, err
    meta = json.loads((tmp_path / "b" / "meta.json").read_text())
    assert meta["columns"] == ["id", "vector"] and meta["encoding"]["backend"].startswith("onnx:f32:")
    assert meta["parity"]["cosine_min"] >= 0.9999


def test_backend_on_encode_index_eval_search(model_dir, beir, tmp_path, capsys):
    # retr encode --backend onnx: the written vectors equal torch's, the backend is in the resume key
    code, _, err = run_cli(["encode", "-m", model_dir, "-d", beir, "-o", tmp_path / "emb", "--backend", "onnx"], capsys)
    assert code == 0, err
    shard = next((tmp_path / "emb").iterdir())
    docs = [json.loads(line) for line in (beir / "corpus.jsonl").read_text().splitlines()]
    passages = [(d["title"] + " " + d["text"]) if d["title"] else d["text"] for d in docs]
    np.testing.assert_allclose(np.load(shard / "embeddings.npy"), torch_vectors(model_dir, passages), atol=1e-4)
    assert json.loads((shard / "meta.json").read_text())["encoding"]["backend"].startswith("onnx:")
    # retr index --backend openvino, searched with torch and with the export's onnx graph: same hits
    code, _, err = run_cli(["index", "-m", model_dir, "-d", beir, "-o", tmp_path / "idx", "--backend", "openvino"],
                           capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "idx" / "meta.json").read_text())["encoder"]["backend"].startswith("openvino:")
    code, _, err = run_cli(["export", "-m", model_dir, "-o", tmp_path / "exp"], capsys)
    assert code == 0, err
    runs = {}
    for name, extra in (("torch", []), ("onnx", ["-m", tmp_path / "exp", "--backend", "onnx"]),
                        ("openvino", ["-m", tmp_path / "exp", "--backend", "openvino"])):  # fused graph: re-exported
        code, _, err = run_cli(["search", "-i", tmp_path / "idx", "--queries", beir, "-k", "3",
                                "--output", tmp_path / f"{name}.json", *extra], capsys)
        assert code == 0, err
        runs[name] = json.loads((tmp_path / f"{name}.json").read_text())
    for name in ("onnx", "openvino"):
        assert [[h["docid"] for h in runs["torch"][q]] for q, _ in QUERIES] == \
            [[h["docid"] for h in runs[name][q]] for q, _ in QUERIES]
        scores = [h["score"] for q, _ in QUERIES for h in runs[name][q]]
        assert scores == pytest.approx([h["score"] for q, _ in QUERIES for h in runs["torch"][q]], abs=1e-5)
    # retr eval --backend onnx: the same metrics as torch (the tiny corpus has no near ties)
    results = {}
    for backend in ("torch", "onnx"):
        code, _, err = run_cli(["eval", "-m", model_dir, "-d", beir, "-o", tmp_path / f"{backend}.eval.json",
                                "--backend", backend], capsys)
        assert code == 0, err
        results[backend] = json.loads((tmp_path / f"{backend}.eval.json").read_text())
    assert results["onnx"]["metrics"] == pytest.approx(results["torch"]["metrics"], abs=1e-6)
    assert results["onnx"] != {}


def test_serve_backend_onnx_answers_like_search(model_dir, beir, tmp_path, capsys):
    import signal
    import subprocess
    import sys

    from test_serve import REPO, _wait_health, free_port, http

    code, _, err = run_cli(["index", "-m", model_dir, "-d", beir, "-o", tmp_path / "idx"], capsys)
    assert code == 0, err
    code, _, err = run_cli(["search", "-i", tmp_path / "idx", "-q", "aspirin heart", "-k", "4", "-o",
                            tmp_path / "s.json"], capsys)
    assert code == 0, err
    expected = json.loads((tmp_path / "s.json").read_text())["q1"]
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "retr.cli.main", "serve", "-i", str(tmp_path / "idx"), "--port",
                             str(port), "-k", "4", "--backend", "onnx"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_health(url, proc)
        status, info = http(f"{url}/info")
        assert status == 200 and info["searcher"]["backend"].startswith("onnx:f32:")  # the runner is in use
        status, got = http(f"{url}/search", {"query": "aspirin heart"})
        assert status == 200 and [h["docid"] for h in got["hits"]] == [h["docid"] for h in expected]
        assert [h["score"] for h in got["hits"]] == pytest.approx([h["score"] for h in expected], abs=1e-5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("args,message", [
    (["--format", "parquet"], "--format parquet exports the vectors of a corpus: give --data"),
    (["--format", "jsonl", "--quantize", "int8", "-d", "{beir}"], "--quantize applies to --format onnx, not jsonl"),
    (["--include-text"], "--include-text applies to --format parquet or jsonl, not onnx"),
    (["--backend", "onnx"], "--backend does not apply to --format onnx"),
    (["--precision", "bf16"], "--precision bf16 does not apply to --format onnx"),
])
def test_export_bad_options_one_line(model_dir, beir, tmp_path, capsys, args, message):
    args = [a.replace("{beir}", str(beir)) for a in args]
    code, _, err = run_cli(["export", "-m", model_dir, "-o", tmp_path / "x", *args], capsys)
    assert code == 2
    assert message in one_line_error(err)
    assert not (tmp_path / "x").exists()


def test_backend_compile_without_a_compiler_is_one_line(model_dir, beir, tmp_path, capsys, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    code, _, err = run_cli(["encode", "-m", model_dir, "-d", beir, "-o", tmp_path / "e", "--backend", "compile"],
                           capsys)
    assert code == 2
    assert "--backend compile needs a C++ compiler" in one_line_error(err)
    assert not (tmp_path / "e").exists() or not any((tmp_path / "e").rglob("embeddings.npy"))


@needs_cxx
def test_backend_compile_on_encode_and_eval(model_dir, beir, tmp_path, capsys):
    """--backend compile (torch.compile, frozen weights) writes torch's vectors and gives torch's metrics."""
    code, _, err = run_cli(["encode", "-m", model_dir, "-d", beir, "-o", tmp_path / "emb", "--backend", "compile",
                            "--batch-size", "3"], capsys)
    assert code == 0, err
    shard = next((tmp_path / "emb").iterdir())
    docs = [json.loads(line) for line in (beir / "corpus.jsonl").read_text().splitlines()]
    passages = [(d["title"] + " " + d["text"]) if d["title"] else d["text"] for d in docs]
    np.testing.assert_allclose(np.load(shard / "embeddings.npy"), torch_vectors(model_dir, passages), atol=1e-5)
    assert json.loads((shard / "meta.json").read_text())["encoding"]["backend"] == "compile:f32:inductor"
    results = {}
    for backend in ("torch", "compile"):
        code, _, err = run_cli(["eval", "-m", model_dir, "-d", beir, "-o", tmp_path / f"{backend}.eval.json",
                                "--backend", backend], capsys)
        assert code == 0, err
        results[backend] = json.loads((tmp_path / f"{backend}.eval.json").read_text())["metrics"]
    assert results["compile"] == pytest.approx(results["torch"], abs=1e-6) and results["torch"]
    code, _, err = run_cli(["encode", "-m", model_dir, "-d", beir, "-o", tmp_path / "e16", "--backend", "compile",
                            "--precision", "fp16"], capsys)
    assert code == 2
    assert "--precision fp16 does not apply to --backend compile" in one_line_error(err)


def _path_without_gxx(tmp_path: Path) -> str:
    """A PATH mirroring the current one (symlinks) without g++ (nor clang++): only ``c++`` is left."""
    import os
    import shutil

    if shutil.which("c++") is None:
        pytest.skip("no c++ on PATH")
    mirror = tmp_path / "bin"
    mirror.mkdir()
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        if not Path(folder).is_dir():
            continue
        for f in Path(folder).iterdir():
            name = f.name
            if "g++" in name or name.startswith("clang++") or (mirror / name).exists():
                continue
            (mirror / name).symlink_to(f)
    return str(mirror)


def test_backend_compile_without_gxx_uses_the_compiler_on_path(model_dir, beir, tmp_path, capsys, monkeypatch):
    """Inductor alone tries only $CXX or g++: with c++ but no g++ on PATH, --backend compile must still write
    torch's vectors (it hands inductor the compiler it found); a CXX that is not there is one line, exit 2."""
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PATH", _path_without_gxx(tmp_path))
    code, _, err = run_cli(["encode", "-m", model_dir, "-d", beir, "-o", tmp_path / "emb", "--backend", "compile"],
                           capsys)
    assert code == 0, err
    shard = next((tmp_path / "emb").iterdir())
    docs = [json.loads(line) for line in (beir / "corpus.jsonl").read_text().splitlines()]
    passages = [(d["title"] + " " + d["text"]) if d["title"] else d["text"] for d in docs]
    np.testing.assert_allclose(np.load(shard / "embeddings.npy"), torch_vectors(model_dir, passages), atol=1e-5)
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-g++"))
    code, _, err = run_cli(["encode", "-m", model_dir, "-d", beir, "-o", tmp_path / "e2", "--backend", "compile"],
                           capsys)
    assert code == 2
    assert "CXX=" in one_line_error(err) and "is not found" in one_line_error(err)


def test_backend_precision_refused_in_one_line(model_dir, beir, tmp_path, capsys):
    code, _, err = run_cli(["encode", "-m", model_dir, "-d", beir, "-o", tmp_path / "e", "--backend", "onnx",
                            "--precision", "bf16"], capsys)
    assert code == 2
    assert "--precision bf16 does not apply to --backend onnx" in one_line_error(err)


def test_serve_refuses_what_search_refuses(model_dir, beir, tmp_path, capsys):
    code, _, err = run_cli(["index", "-m", model_dir, "-d", beir, "-o", tmp_path / "idx"], capsys)
    assert code == 0, err
    idx = tmp_path / "idx"
    cases = [["--rerank-top-k", "5"], ["--rerank-alpha", "0.5"], ["--corpus", beir], ["--k1", "1.2"],
             ["--b", "0.5"], ["--rerank", model_dir]]
    for extra in cases:
        lines = []
        for command in (["search", "-q", "aspirin"], ["serve", "--port", "1"]):
            code, _, err = run_cli([command[0], "-i", idx, *command[1:], *extra], capsys)
            assert code == 2, (command, extra, err)
            lines.append(one_line_error(err).replace(f"retr {command[0]}:", "retr COMMAND:"))
        assert lines[0] == lines[1], (extra, lines)  # the same refusal, word for word


def test_decoder_export_last_token_pooling(tiny_decoder_dir, tmp_path, capsys):
    import shutil

    model = tmp_path / "dec"
    shutil.copytree(tiny_decoder_dir, model)
    (model / "retr_encoder.json").write_text(json.dumps({"pooling": "last"}))  # EOS appended, last token pooled
    code, _, err = run_cli(["export", "-m", model, "-o", tmp_path / "e"], capsys)
    assert code == 0, err
    meta = json.loads((tmp_path / "e" / "meta.json").read_text())
    assert meta["encoder"]["pooling"] == "last" and meta["encoder"]["append_eos"] is True
    assert meta["ort_fused"] is False and meta["parity"]["cosine_min"] >= 0.9999  # not BERT-like: plain graph
    from retr.retriever.modeling import DualEncoder

    enc = DualEncoder.from_pretrained(tmp_path / "e")
    ref = enc.encode_passages(TEXTS, batch_size=2)
    enc.set_backend("onnx")
    assert cosines(enc.encode_passages(TEXTS, batch_size=2), ref).min() >= 0.9999


def test_export_never_replaces_a_foreign_directory(model_dir, tmp_path, capsys):
    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    code, _, err = run_cli(["export", "-m", model_dir, "-o", foreign], capsys)
    assert code == 2 and "is not a retr export" in one_line_error(err)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    code, _, err = run_cli(["export", "-m", model_dir, "-o", tmp_path / "e"], capsys)  # a retr export is replaced
    assert code == 0, err
    code, _, err = run_cli(["export", "-m", model_dir, "-o", tmp_path / "e", "--quantize", "int8"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "e" / "meta.json").read_text())["quantize"] == "int8"


def test_backend_compile_runners_do_not_share_a_recompile_budget(model_dir):
    """dynamo caches compiled graphs per code object and runs eager (silently, one log warning) past
    ``recompile_limit``: each runner must compile its own graph, however many other runners (towers, models,
    settings) the process holds. With the limit at 1, a second runner of other settings must still compile."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    texts = TEXTS[:2]
    # torch's own patch: monkeypatch's undo of a config module attribute deletes it (later compiles fail)
    with torch._dynamo.config.patch(recompile_limit=1):
        _compile_each(model_dir, texts, counters)


def _compile_each(model_dir, texts, counters):
    from retr.retriever.modeling import DualEncoder

    for overrides in ({}, {"pooling": "mean", "dim": 8}):
        kw = {"truncate_dim": overrides["dim"], "pooling": overrides["pooling"]} if overrides else {}
        enc = DualEncoder.from_pretrained(model_dir, **kw)
        enc.set_backend("compile")
        before = counters["stats"]["unique_graphs"]
        got = enc.encode_passages(texts)
        assert counters["stats"]["unique_graphs"] == before + 1, overrides  # compiled, not run eager
        np.testing.assert_allclose(got, torch_vectors(model_dir, texts, **kw), atol=1e-5)


@needs_cxx
def test_backend_compile_freezes_the_weights(model_dir):
    """Freezing (weights folded into the graph, pre-packed oneDNN linears) must really be on: once compiled, an
    in-place edit of a weight is not seen by the compiled graph, while its vectors equal torch's. The first
    version asked for freezing as a ``torch.compile`` option, which inductor ignored (plain ``addmm`` on the
    live weights: the edit was seen)."""
    import torch

    from retr.retriever.modeling import DualEncoder

    enc = DualEncoder.from_pretrained(model_dir)
    enc.set_backend("compile")
    before = enc.encode_passages(TEXTS[:2])
    np.testing.assert_allclose(before, torch_vectors(model_dir, TEXTS[:2]), atol=1e-5)
    with torch.no_grad():
        for p in enc.passage_tower.model.parameters():
            if p.dim() == 2 and p.shape[0] == p.shape[1]:  # the attention projections
                p.mul_(0.5)
    after = enc.encode_passages(TEXTS[:2])
    np.testing.assert_allclose(after, before, atol=1e-6)
    enc.set_backend("torch")
    assert np.abs(enc.encode_passages(TEXTS[:2]) - before).max() > 1e-3  # the edit does change the model


@needs_cxx
def test_backend_compile_runs_a_batch_of_one_in_the_same_graph(model_dir):
    """A lone query must not compile a second graph (dynamo specialises size 1; each frozen graph holds its own
    copy of the weights): batches of 3 and then of 1 make one graph, and the lone vector equals torch's."""
    from torch._dynamo.utils import counters

    from retr.retriever.modeling import DualEncoder

    enc = DualEncoder.from_pretrained(model_dir)
    enc.set_backend("compile")
    before = counters["stats"]["unique_graphs"]
    enc.encode_passages(TEXTS[:3])
    lone = enc.encode_passages(TEXTS[3:4])
    assert counters["stats"]["unique_graphs"] == before + 1
    np.testing.assert_allclose(lone, torch_vectors(model_dir, TEXTS[3:4]), atol=1e-5)

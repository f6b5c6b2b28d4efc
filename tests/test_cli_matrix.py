"""Issue #18: every numeric and path option of `retr index|search|eval|mine|encode` given a bad value exits 2 with
one line on stderr naming the command and the option (no traceback, no boxed usage message), and is refused
before any work: values checked while parsing load no model; values that need the model (an index type invalid
for its dim, more IVF lists than vectors) are refused before anything is encoded."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO, run_cli, write_beir


@pytest.fixture(scope="module")
def paths(tmp_path_factory, tiny_model_dir):
    from retr.retriever.data.corpus import load_corpus
    from retr.retriever.modeling import DualEncoder
    from retr.retriever.search import DenseRetriever

    root = tmp_path_factory.mktemp("matrix")
    data = write_beir(root / "beir")
    DenseRetriever.build(DualEncoder.from_pretrained(tiny_model_dir), load_corpus(data / "corpus.jsonl"),
                         root / "flat", show_progress=False)
    (root / "afile").write_text("not a directory\n")
    (root / "empty").mkdir()
    return {"model": tiny_model_dir, "data": data, "corpus": data / "corpus.jsonl", "index": root / "flat",
            "file": root / "afile", "dir": root / "empty", "missing": root / "missing", "out": root / "out"}


@pytest.fixture
def no_work(monkeypatch, request):
    """Encoding always fails the test; at stage "parse" so does loading a model or an index."""
    from retr.indexing.faiss_index import FaissIndex
    from retr.retriever.modeling.encoder import Encoder

    def forbidden(what):
        def boom(*a, **k):
            raise AssertionError(f"{what} before the bad value was refused")
        return boom

    monkeypatch.setattr(Encoder, "encode", forbidden("encoding started"))
    if request.param == "parse":
        monkeypatch.setattr(Encoder, "from_pretrained", classmethod(forbidden("a model was loaded")))
        monkeypatch.setattr(FaissIndex, "load", classmethod(forbidden("an index was loaded")))
    return request.param


INDEX = ["index", "-m", "{model}", "-d", "{data}", "-o", "{out}"]
SEARCH = ["search", "-i", "{index}", "-q", "aspirin"]
EVAL = ["eval", "-m", "{model}", "-d", "{data}"]
MINE = ["mine", "-d", "{data}", "--split", "test", "--teacher", "{model}", "-o", "{out}/m.jsonl"]
ENCODE = ["encode", "-m", "{model}", "-d", "{data}", "-o", "{out}"]
NOT_INT, AT_LEAST_1 = "'abc' is not a valid integer", "must be at least 1, got 0"

# (base command, extra args, what the one error line says, stage at which it is refused)
CASES = [
    # ---- retr index ----
    (INDEX, ["--batch-size", "0"], "retr index: --batch-size: " + AT_LEAST_1, "parse"),
    (INDEX, ["-b", "abc"], "retr index: --batch-size: " + NOT_INT, "parse"),
    (INDEX, ["--block-size", "0"], "retr index: --block-size: " + AT_LEAST_1, "parse"),
    (INDEX, ["--query-max-length", "0"], "--query-max-length: " + AT_LEAST_1, "parse"),
    (INDEX, ["--passage-max-length", "-5"], "--passage-max-length: must be at least 1, got -5", "parse"),
    (INDEX, ["-t", "ivf", "--nlist", "0"], "--nlist: " + AT_LEAST_1, "parse"),
    (INDEX, ["-t", "ivf", "--nlist", "abc"], "--nlist: " + NOT_INT, "parse"),
    (INDEX, ["-t", "ivf", "--nprobe", "0"], "--nprobe: " + AT_LEAST_1, "parse"),
    (INDEX, ["-t", "ivf", "--train-sample", "0"], "--train-sample: " + AT_LEAST_1, "parse"),
    (INDEX, ["-t", "hnsw", "--hnsw-m", "1"], "--hnsw-m: must be at least 2, got 1", "parse"),
    (INDEX, ["-t", "hnsw", "--ef-construction", "0"], "--ef-construction: " + AT_LEAST_1, "parse"),
    (INDEX, ["-t", "hnsw", "--ef-search", "-3"], "--ef-search: must be at least 1, got -3", "parse"),
    (INDEX, ["-t", "pq", "--pq-m", "0"], "--pq-m: " + AT_LEAST_1, "parse"),
    (INDEX, ["-t", "pq", "--pq-bits", "17"], "--pq-bits: must be at most 16, got 17", "parse"),
    (INDEX, ["--metric", "cos"], "--metric: 'cos' is not one of 'ip', 'l2'", "parse"),
    (INDEX, ["--precision", "fp8"], "--precision: 'fp8' is not one of 'auto', 'fp32', 'fp16', 'bf16'", "parse"),
    (INDEX, ["--pooling", "max"], "--pooling: 'max' is not one of 'mean', 'cls', 'last'", "parse"),
    (INDEX, ["--nlist", "4"], "--nlist does not apply to --index-type flat", "parse"),
    (INDEX, ["-t", "IVF4,Flat", "--pq-bits", "4"], "--pq-bits does not apply to --index-type IVF4,Flat", "parse"),
    (INDEX, ["-t", "bogus"], "index type 'bogus' is not valid for dim 32", "load"),
    (INDEX, ["-t", "pq", "--pq-m", "5"], "index type 'PQ5x8' is not valid for dim 32", "load"),
    (INDEX, ["-t", "ivf", "--nlist", "100"], "IVF100,Flat: 100 IVF lists need at least 100 vectors to train, the "
                                             "corpus has 8", "load"),
    (INDEX, ["-t", "ivf", "--nlist", "4", "--train-sample", "2"], "4 IVF lists need at least 4 vectors to train, "
                                                                  "--train-sample is 2", "load"),
    (INDEX, ["-t", "ivf", "--nlist", str(10**12)], f"{10**12} IVF lists need at least {10**12} vectors", "load"),
    (INDEX, ["-t", "pq", "--pq-m", "4"], "8-bit PQ codes need at least 256 vectors to train, the corpus has 8", "load"),
    (["index", "-m", "{model}", "-d", "{missing}", "-o", "{out}"], [], "retr index: --data: path '{missing}' does not "
                                                                      "exist", "parse"),
    (["index", "-m", "{missing}", "-d", "{data}", "-o", "{out}"], [], "--model: {missing}: model directory not found",
     "parse"),
    (["index", "-m", "{model}", "-d", "{data}", "-o", "{file}"], [], "{file} exists and is a file, not a retr index",
     "parse"),
    (["index", "--from-embeddings", "{missing}", "-o", "{out}"], [], "--from-embeddings: directory '{missing}' does "
                                                                    "not exist", "parse"),
    (["index", "--from-embeddings", "{file}", "-o", "{out}"], [], "--from-embeddings: directory '{file}' is a file",
     "parse"),
    (["index", "--from-embeddings", "{dir}", "-o", "{out}"], [], "{dir}: no embedding shards", "parse"),
    (["index", "--from-embeddings", "{dir}"], [], "retr index: --output is required", "parse"),
    (["index", "--from-embeddings", "{dir}", "-o", "{out}", "-m", "{model}"], [], "--model does not apply with "
                                                                                 "--from-embeddings", "parse"),
    (["index", "-m", "{model}", "-o", "{out}"], [], "--data, --output and (unless --bm25) --model are required",
     "parse"),
    (["index", "--append", "-d", "{data}", "-o", "{out}", "-t", "hnsw"], [], "--index-type does not apply with "
                                                                            "--append", "parse"),
    (["index", "info", "{dir}"], [], "{dir}: not an index directory (missing meta.json)", "parse"),
    # ---- retr search ----
    (SEARCH, ["--k", "0"], "retr search: --k: " + AT_LEAST_1, "parse"),
    (SEARCH, ["-k", "-1"], "retr search: --k: must be at least 1, got -1", "parse"),
    (SEARCH, ["-k", "abc"], "retr search: --k: " + NOT_INT, "parse"),
    (SEARCH, ["--ef-search", "0"], "--ef-search: " + AT_LEAST_1, "parse"),
    (SEARCH, ["--nprobe", "0"], "--nprobe: " + AT_LEAST_1, "parse"),
    (SEARCH, ["--rescore", "0"], "--rescore: " + AT_LEAST_1, "parse"),
    (SEARCH, ["--threads", "-1"], "--threads: must be at least 0, got -1", "parse"),
    (SEARCH, ["--batch-size", "0"], "--batch-size: " + AT_LEAST_1, "parse"),
    (SEARCH, ["--k1", "-1"], "--k1: must be at least 0.0, got -1", "parse"),
    (SEARCH, ["--b", "1.5"], "--b: must be at most 1.0, got 1.5", "parse"),
    (SEARCH, ["--b", "x"], "--b: 'x' is not a valid number", "parse"),
    (SEARCH, ["--rerank-top-k", "0"], "--rerank-top-k: " + AT_LEAST_1, "parse"),
    (SEARCH, ["--rerank-alpha", "2"], "--rerank-alpha: must be at most 1.0, got 2", "parse"),
    (SEARCH, ["--precision", "fp8"], "--precision: 'fp8' is not one of", "parse"),
    (SEARCH, ["--queries", "{missing}"], "--queries: path '{missing}' does not exist", "parse"),
    (SEARCH, ["--rerank", "{model}", "--corpus", "{missing}"], "--corpus: path '{missing}' does not exist", "parse"),
    (SEARCH, ["--rerank", "{missing}", "--corpus", "{data}"], "--rerank: {missing}: model directory not found", "parse"),
    (SEARCH, ["--rerank", "{model}"], "--rerank needs --corpus", "parse"),
    (SEARCH, ["--rerank-top-k", "5"], "--rerank-top-k does not apply without --rerank", "parse"),
    (SEARCH, ["--run", "{dir}"], "{dir} is a directory; --run names a file", "parse"),
    (SEARCH, ["-o", "{dir}"], "{dir} is a directory; --output names a file", "parse"),
    (SEARCH, ["-m", "{missing}"], "--model: {missing}: model directory not found", "parse"),
    # (checked by the index loader, whose message can add where a killed replacement left the previous index)
    (["search", "-i", "{missing}", "-q", "x"], [], "{missing}: index directory not found", "load"),
    (["search", "-i", "{file}", "-q", "x"], [], "{file}: index directory not found", "load"),
    (["search", "-i", "{dir}", "-q", "x"], [], "missing index.faiss", "load"),
    (["search", "-i", "{index}"], [], "retr search: give --query TEXT or --queries FILE", "parse"),
    (["search", "-q", "x"], [], "retr search: missing option --index", "parse"),
    (SEARCH, ["--rescore", "5"], "--rescore needs stored vectors; rebuild the index with --store-vectors", "load"),
    (SEARCH, ["--nprobe", "4"], "--nprobe does not apply to a Flat index (only to IVF)", "load"),
    (SEARCH, ["--ef-search", "64"], "--ef-search does not apply to a Flat index (only to HNSW)", "load"),
    (SEARCH, ["--k1", "1.2"], "--k1 does not apply to a dense index", "parse"),
    # ---- retr eval ----
    (EVAL, ["-k", "0"], "retr eval: --k: " + AT_LEAST_1, "parse"),
    (EVAL, ["--batch-size", "0"], "--batch-size: " + AT_LEAST_1, "parse"),
    (EVAL, ["--threads", "-2"], "--threads: must be at least 0, got -2", "parse"),
    (EVAL, ["--passage-max-length", "0"], "--passage-max-length: " + AT_LEAST_1, "parse"),
    (EVAL, ["-r", "hybrid", "--fusion", "weighted", "--alpha", "1.5"], "--alpha: must be at most 1.0, got 1.5", "parse"),
    (EVAL, ["-r", "hybrid", "--rrf-k", "-1"], "--rrf-k: must be at least 0, got -1", "parse"),
    (EVAL, ["-r", "bm25", "--k1", "-0.5"], "--k1: must be at least 0.0, got -0.5", "parse"),
    (EVAL, ["-r", "bm25", "--b", "2"], "--b: must be at most 1.0, got 2", "parse"),
    (EVAL, ["--rerank-top-k", "0"], "--rerank-top-k: " + AT_LEAST_1, "parse"),
    (EVAL, ["--rerank-alpha", "-0.1"], "--rerank-alpha: must be at least 0.0, got -0.1", "parse"),
    (EVAL, ["-r", "colbert"], "--retriever: 'colbert' is not one of 'dense', 'bm25', 'hybrid'", "parse"),
    (EVAL, ["-r", "hybrid", "--fusion", "max"], "--fusion: 'max' is not one of 'rrf', 'weighted'", "parse"),
    (EVAL, ["--precision", "half"], "--precision: 'half' is not one of", "parse"),
    (EVAL, ["--index", "{file}"], "{file} exists and is a file, not a retr index", "parse"),
    (EVAL, ["--index", "{dir}/../afile/x"], "cannot create", "parse"),
    (EVAL, ["-o", "{dir}"], "{dir} is a directory; --output names a file", "parse"),
    (EVAL, ["--run", "{dir}"], "{dir} is a directory; --run names a file", "parse"),
    (EVAL, ["--split", "dev"], "no qrels for split 'dev' (have: test)", "parse"),
    (EVAL, ["--k1", "1.2"], "--k1 does not apply to --retriever dense", "parse"),
    (EVAL, ["-r", "bm25"], "--model does not apply to --retriever bm25", "parse"),
    (EVAL, ["--output-dir", "{dir}"], "--output-dir does not apply to one dataset", "parse"),
    (["eval", "-m", "{model}", "-d", "{missing}"], [], "retr eval: --data: directory '{missing}' does not exist",
     "parse"),
    (["eval", "-m", "{model}", "-d", "{corpus}"], [], "retr eval: --data: directory '{corpus}' is a file", "parse"),
    (["eval", "-m", "{missing}", "-d", "{data}"], [], "--model: {missing}: model directory not found", "parse"),
    (["eval", "--suite", "{missing}", "-d", "{data}"], [], "--suite: file '{missing}' does not exist", "parse"),
    (["eval", "--suite", "{dir}", "-d", "{data}"], [], "--suite: file '{dir}' is a directory", "parse"),
    (["eval", "-m", "{model}", "-d", "{data}", "-d", "{data}", "--output-dir", "{file}"], [],
     "{file} is a file, not a directory; choose another --output-dir", "parse"),
    # ---- retr mine ----
    (MINE, ["--range-min", "0"], "retr mine: --range-min: " + AT_LEAST_1, "parse"),
    (MINE, ["--range-max", "0"], "--range-max: " + AT_LEAST_1, "parse"),
    (MINE, ["--range-min", "50", "--range-max", "10"], "--range-min 50 is more than --range-max 10", "parse"),
    (MINE, ["--num-negatives", "-1"], "--num-negatives: must be at least 0, got -1", "parse"),
    (MINE, ["--seed", "-1"], "--seed: must be at least 0, got -1", "parse"),
    (MINE, ["--seed", "1e3"], "--seed: '1e3' is not a valid integer", "parse"),
    (MINE, ["--threads", "-1"], "--threads: must be at least 0, got -1", "parse"),
    (MINE, ["--batch-size", "0"], "--batch-size: " + AT_LEAST_1, "parse"),
    (MINE, ["--query-max-length", "0"], "--query-max-length: " + AT_LEAST_1, "parse"),
    (MINE, ["--precision", "fp64"], "--precision: 'fp64' is not one of", "parse"),
    (MINE, ["--index", "{file}"], "{file} exists and is a file, not a retr index", "parse"),
    (MINE, ["--split", "train"], "no qrels for split 'train' (have: test)", "parse"),
    (["mine", "-d", "{data}", "--split", "test", "--batch-size", "8", "-o", "{out}/m.jsonl"], [],
     "--batch-size does not apply to --teacher bm25", "parse"),
    (["mine", "-d", "{missing}", "--split", "test", "-o", "{out}/m.jsonl"], [], "--data: directory '{missing}' does "
                                                                                "not exist", "parse"),
    (["mine", "-d", "{corpus}", "--split", "test", "-o", "{out}/m.jsonl"], [], "--data: directory '{corpus}' is a "
                                                                              "file", "parse"),
    (["mine", "-d", "{data}", "--split", "test", "--teacher", "{missing}", "-o", "{out}/m.jsonl"], [],
     "--teacher: {missing}: model directory not found", "parse"),
    (["mine", "-d", "{data}", "--split", "test", "--teacher", "{model}", "-o", "{dir}"], [],
     "{dir} is a directory; --output names a file", "parse"),
    (["mine", "-d", "{data}", "--split", "test"], [], "retr mine: missing option --output", "parse"),
    # ---- retr encode ----
    (ENCODE, ["--shard", "-1"], "retr encode: --shard: must be at least 0, got -1", "parse"),
    (ENCODE, ["--num-shards", "0"], "--num-shards: " + AT_LEAST_1, "parse"),
    (ENCODE, ["--shard", "2", "--num-shards", "2"], "--shard must be in 0..1 and --num-shards >= 1 (got 2 of 2)",
     "parse"),
    (ENCODE, ["--batch-size", "0"], "--batch-size: " + AT_LEAST_1, "parse"),
    (ENCODE, ["--block-size", "-8"], "--block-size: must be at least 1, got -8", "parse"),
    (ENCODE, ["--passage-max-length", "0"], "--passage-max-length: " + AT_LEAST_1, "parse"),
    (ENCODE, ["--precision", "int8"], "--precision: 'int8' is not one of", "parse"),
    (ENCODE, ["--pooling", "sum"], "--pooling: 'sum' is not one of", "parse"),
    (["encode", "-m", "{model}", "-d", "{missing}", "-o", "{out}"], [], "--data: path '{missing}' does not exist",
     "parse"),
    (["encode", "-m", "{missing}", "-d", "{data}", "-o", "{out}"], [], "--model: {missing}: model directory not "
                                                                      "found", "parse"),
    (["encode", "-m", "{model}", "-d", "{data}", "-o", "{file}"], [], "{file} is a file, not a directory; choose "
                                                                     "another --output", "parse"),
    (["encode", "-d", "{data}", "-o", "{out}"], [], "retr encode: missing option --model", "parse"),
    # ---- usage errors Typer raises itself ----
    (SEARCH, ["--bogus"], "retr search: no such option: --bogus", "parse"),
    (SEARCH, ["-k"], "retr search: option '-k' requires an argument", "parse"),
    (["index", "info"], [], "retr index info: missing argument INDEX_DIR", "parse"),
    (["serach", "-i", "x"], [], "retr: no such command 'serach'", "parse"),
]


def _case_id(case) -> str:
    base, extra, _, _ = case
    words = [a for a in (*base[:1], *extra, *base[1:]) if not a.startswith("{")]
    return "-".join(words)[:60]


@pytest.mark.parametrize("base,extra,expected,no_work", CASES, ids=[_case_id(c) for c in CASES],
                         indirect=["no_work"])
def test_bad_value_is_one_line_exit_2_before_any_work(paths, capsys, no_work, base, extra, expected):
    """Refused while parsing: stderr is that one line. Refused after loading the model or index: progress log
    lines may come first, the error is still one line, and the last."""
    args = [a.format(**paths) for a in (*base, *extra)]
    code, out, err = run_cli(args, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err[-2000:])
    assert "Traceback" not in err and "╭" not in err, err[-2000:]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err[-2000:]
    if no_work == "parse":
        assert len(lines) == 1, err[-2000:]
    assert expected.format(**paths) in errors[0], errors[0]
    assert not paths["out"].exists()  # nothing written


def test_every_bad_value_case_names_a_command_and_every_command_has_cases():
    commands = {c[0][0] for c in CASES}
    assert {"index", "search", "eval", "mine", "encode"} <= commands
    for command in ("index", "search", "eval", "mine", "encode"):
        assert sum(c[0][0] == command for c in CASES) >= 10


@pytest.mark.parametrize("args,expected", [
    (["index", "--nlist", "abc"], "error: retr index: --nlist: 'abc' is not a valid integer"),
    (["search", "-q", "x"], "error: retr search: missing option --index"),
])
def test_the_installed_entry_point_prints_one_line(args, expected):
    """The real process (no in-process test harness): one line on stderr, nothing on stdout, exit 2."""
    proc = subprocess.run([sys.executable, "-m", "retr.cli.main", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [expected]


@pytest.mark.parametrize("command", ["index", "search", "eval", "mine", "encode", "train", "init-model"])
def test_help_still_exits_0(command, capsys):
    code, out, _ = run_cli([command, "--help"], capsys)
    assert code == 0 and "Usage: retr " + command in " ".join(out.split())


def test_traceback_on_request(paths, capsys, monkeypatch):
    """RETR_TRACEBACK=1 re-raises usage errors too, for debugging."""
    import typer

    monkeypatch.setenv("RETR_TRACEBACK", "1")
    with pytest.raises(typer.BadParameter):
        run_cli(["search", "-i", paths["index"], "-q", "x", "-k", "0"], capsys)

"""Scale: wall time and peak RSS of every retr stage on synthetic corpora of 10k, 100k and 1M passages.

    .venv/bin/python benchmarks/scale.py [--sizes 10000 100000 1000000] [--out out/scale] [--stages ...]

Corpora are built deterministically from the sentences of the shared SciFact, NFCorpus and ArguAna corpora:
passage i holds random sentences until it reaches 80 words (title: the first words of another sentence). Queries:
1,000 test queries (6-10 words of one sentence of a random passage, which is its one judged document), plus
n/10 "train" queries (for `retr mine`) and 0.3 n "b3" queries (B3 mining), built the same way. Each stage runs
as its own process (the `retr` CLI or a short Python snippet); peak RSS is that process's `ru_maxrss` from
`os.wait4`, so stages never share memory accounting. The encoder is a random-init BERT (1 layer, hidden 384,
passages truncated to 64 tokens, bf16 autocast) so the non-model stages show; `--model` takes another one.

Results go to OUT/results.json and print as a table (per stage x size: seconds, peak RSS, microseconds per
document, and for indexes their bytes on disk).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATASETS = ("scifact", "nfcorpus", "arguana")


# ---------------------------------------------------------------- synthetic data

def shared_sentences(data: Path) -> list[str]:
    out: list[str] = []
    for name in DATASETS:
        with open(data / name / "corpus.jsonl", encoding="utf-8") as fh:
            for line in fh:
                text = json.loads(line)["text"]
                out.extend(s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if len(s.split()) >= 6)
    return out


def make_dataset(root: Path, n: int, sentences: list[str], seed: int = 0, words: int = 80) -> Path:
    """Write ROOT/corpus.jsonl, queries.jsonl, qrels/{test,train,b3}.tsv (skipped when already complete)."""
    if (root / "DONE").exists():
        return root
    root.mkdir(parents=True, exist_ok=True)
    (root / "qrels").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    splits = {"test": 1000, "train": n // 10, "b3": (3 * n) // 10}
    targets = {name: rng.choice(n, size=min(k, n), replace=k > n) for name, k in splits.items()}
    wanted: dict[int, list[tuple[str, int]]] = {}
    for name, docs in targets.items():
        for j, d in enumerate(docs):
            wanted.setdefault(int(d), []).append((name, j))
    queries: dict[str, dict[int, str]] = {name: {} for name in splits}
    lens = np.array([len(s.split()) for s in sentences])
    with open(root / "corpus.jsonl", "w", encoding="utf-8") as fh:
        for i in range(n):
            picked, count = [], 0
            while count < words:
                s = int(rng.integers(len(sentences)))
                picked.append(s)
                count += int(lens[s])
            text = " ".join(" ".join(sentences[s] for s in picked).split()[:words])
            title = " ".join(sentences[int(rng.integers(len(sentences)))].split()[:6])
            fh.write(json.dumps({"_id": f"p{i}", "title": title, "text": text}) + "\n")
            for name, j in wanted.get(i, ()):
                src = sentences[picked[int(rng.integers(len(picked)))]].split()
                size = int(rng.integers(6, 11))
                start = int(rng.integers(0, max(1, len(src) - size + 1)))
                queries[name][j] = " ".join(src[start:start + size])
    with open(root / "queries.jsonl", "w", encoding="utf-8") as fh:
        for name in splits:
            for j in sorted(queries[name]):
                fh.write(json.dumps({"_id": f"{name}{j}", "text": queries[name][j]}) + "\n")
    for name, docs in targets.items():
        with open(root / "qrels" / f"{name}.tsv", "w") as fh:
            fh.write("query-id\tcorpus-id\tscore\n")
            for j, d in enumerate(docs):
                fh.write(f"{name}{j}\tp{int(d)}\t1\n")
    (root / "DONE").write_text("ok")
    return root


# ---------------------------------------------------------------- measuring one stage

def run_stage(cmd: list[str], log: Path, env: dict | None = None) -> dict:
    """Run ``cmd`` as its own process; wall seconds and its peak RSS (MiB) from wait4."""
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        fh.write("$ " + shlex.join(cmd) + "\n")
        fh.flush()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, **(env or {})})
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = log.read_text().splitlines()[-5:]
        raise SystemExit(f"stage failed ({code}): {shlex.join(cmd)}\n" + "\n".join(tail))
    return {"seconds": round(seconds, 2), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def dir_bytes(path: Path) -> int:
    path = Path(path)
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


SNIPPET_CORPUS = """
import sys, time
from retr.retriever.data import load_corpus
c = load_corpus(sys.argv[1], rebuild=True)
print(len(c), c.fingerprint)
"""

SNIPPET_B3 = """
import sys, logging
logging.basicConfig(level=logging.INFO)
from retr.retriever.data import load_beir
from retr.retriever.data.training import examples_from_beir
from retr.retriever.training.arguments import TrainConfig
from retr.retriever.training.distributed import DistInfo
from retr.retriever.training.driver import b3_sampler
data, model, cache = sys.argv[1:4]
ds = load_beir(data, "b3")
examples = examples_from_beir(ds)
cfg = TrainConfig(model=model, batch_size=32, batching="b3", b3_teacher=model, b3_cache=cache)
sampler = b3_sampler(examples, cfg, DistInfo())
print("examples", len(examples), "batches", len(sampler))
"""


SNIPPET_TOKENS = """
import sys, time
import numpy as np
from transformers import AutoTokenizer
from retr.retriever.data.contriever import ContrieverPairs, CropConfig, corpus_tokens, make_chunks
data, model, cache = sys.argv[1:4]
tok = AutoTokenizer.from_pretrained(model, trust_remote_code=False)
store = corpus_tokens([data], tok, cache)  # tokenise once into the memmapped token stream
for chunking in ("stream", "document"):
    pairs = ContrieverPairs(make_chunks(store, chunking, CropConfig()), tok.cls_token_id, tok.sep_token_id)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for i in rng.integers(0, len(pairs), size=20_000):  # what an epoch's batches read, sampled
        pairs[int(i)]
    print(chunking, len(pairs), "chunks", round(time.perf_counter() - t0, 1), "s for 20k pairs")
"""


SNIPPET_TEVATRON = """
import sys, time
from retr.retriever.data.examples import TevatronFile
from retr.retriever.training.collator import pick_group
t0 = time.perf_counter()
ex = TevatronFile(sys.argv[1])
n_neg = 0
for e in ex:  # one streamed pass, as the trainer's fingerprint and collator set-up do
    n_neg += len(e.negatives)
groups = [pick_group(ex, i, 0, 8, 0) for i in range(0, len(ex), max(1, len(ex) // 1000))]
print(len(ex), "examples", n_neg, "negatives", round(time.perf_counter() - t0, 1), "s")
"""


def make_tevatron(path: Path, data: Path, queries: int, negatives: int = 20, seed: int = 0) -> Path:
    """Tevatron JSONL of ``queries`` examples with ``negatives`` random passages each (texts from the corpus)."""
    if path.exists():
        return path
    from retr.retriever.data import load_corpus

    corpus = load_corpus(data / "corpus.jsonl")
    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for q in range(queries):
            rows = rng.integers(0, len(corpus), size=negatives + 1)
            ps = [{"docid": corpus.ids[int(r)], "title": corpus.titles[int(r)], "text": corpus.texts[int(r)]}
                  for r in rows]
            fh.write(json.dumps({"query_id": f"t{q}", "query": " ".join(ps[0]["text"].split()[:8]),
                                 "positive_passages": ps[:1], "negative_passages": ps[1:]}) + "\n")
    tmp.rename(path)
    return path


def stages(data: Path, work: Path, model: str, retr: str, py: str, n: int, only: set[str] | None):
    """(name, command, bytes-of-output-or-None) for each stage, in order."""
    enc = ["--passage-max-length", "64", "--query-max-length", "32", "--precision", "bf16", "--batch-size", "128"]
    all_stages = [
        ("corpus store (first read)", [py, "-c", SNIPPET_CORPUS, str(data / "corpus.jsonl")], None),
        ("encode (retr encode)", [retr, "encode", "-m", model, "-d", str(data), "-o", str(work / "emb"),
                                  "--batch-size", "128", "--precision", "bf16", "--passage-max-length", "64"], None),
        ("index flat (from embeddings)", [retr, "index", "--from-embeddings", str(work / "emb"), "-o",
                                          str(work / "idx-flat"), "-t", "flat"], work / "idx-flat"),
        ("index ivfpq (from embeddings)", [retr, "index", "--from-embeddings", str(work / "emb"), "-o",
                                           str(work / "idx-ivfpq"), "-t", "ivfpq", "--pq-m", "48"], work / "idx-ivfpq"),
        ("retr index flat (encode+build)", [retr, "index", "-m", model, "-d", str(data), "-o", str(work / "idx-e2e"),
                                            "-t", "flat", *enc], work / "idx-e2e"),
        ("retr eval (flat index)", [retr, "eval", "-d", str(data), "-i", str(work / "idx-flat"), "--k", "1000",
                                    "-o", str(work / "eval-flat.json"), "--run", str(work / "flat.trec")], None),
        ("retr eval (ivfpq index)", [retr, "eval", "-d", str(data), "-i", str(work / "idx-ivfpq"), "-m", model,
                                     *enc, "--k", "1000", "-o", str(work / "eval-ivfpq.json")], None),
        ("retr mine (dense, n/10 queries)", [retr, "mine", "-d", str(data), "--split", "train", "--teacher", model,
                                             "-i", str(work / "idx-flat"), *enc, "-o", str(work / "mined.jsonl")], None),
        ("B3 mining (0.3 n examples)", [py, "-c", SNIPPET_B3, str(data), model, str(work / "b3cache")], None),
        ("retr index --bm25", [retr, "index", "--bm25", "-d", str(data), "-o", str(work / "bm25")], work / "bm25"),
        ("retr mine (bm25, n/10 queries)", [retr, "mine", "-d", str(data), "--split", "train", "--teacher", "bm25",
                                            "-i", str(work / "bm25"), "-o", str(work / "mined-bm25.jsonl")], None),
        ("Contriever tokens + chunks", [py, "-c", SNIPPET_TOKENS, str(data), model, str(work / "tokens")],
         work / "tokens"),
        ("Tevatron JSONL (n/2 x 20 negatives)", [py, "-c", SNIPPET_TEVATRON, str(work / "tevatron.jsonl")], None),
    ]
    for name, cmd, out in all_stages:
        if only and not any(o in name for o in only):
            continue
        yield name, cmd, out


def real_model_run(args, retr: str, env: dict, results: dict) -> None:
    """MiniLM (bf16) over the 139k-sentence corpus of benchmarks/ann.py: `retr index` and `retr search`."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from ann import DATASETS as ANN_SETS, sentences

    data = args.out / "data-real"
    if not (data / "DONE").exists():
        data.mkdir(parents=True, exist_ok=True)
        ids, texts = sentences(str(args.data))
        with open(data / "corpus.jsonl", "w", encoding="utf-8") as fh:
            for d, t in zip(ids, texts):
                fh.write(json.dumps({"_id": d.replace("/", ":"), "text": t}) + "\n")
        with open(data / "queries.jsonl", "w", encoding="utf-8") as fh:
            for name in ANN_SETS:
                for line in open(args.data / name / "queries.jsonl", encoding="utf-8"):
                    q = json.loads(line)
                    fh.write(json.dumps({"_id": f"{name}:{q['_id']}", "text": q["text"]}) + "\n")
        (data / "DONE").write_text("ok")
    n = sum(1 for _ in open(data / "corpus.jsonl"))
    work = args.out / "work-real"
    work.mkdir(exist_ok=True)
    subprocess.run(["rm", "-rf", str(work / "idx")], check=True)
    for name, cmd in [
        ("MiniLM: retr index flat (bf16)", [retr, "index", "-m", "minilm", "-d", str(data), "-o", str(work / "idx"),
                                            "--precision", "bf16", "--passage-max-length", "128", "-b", "128"]),
        ("MiniLM: retr search (all queries)", [retr, "search", "-i", str(work / "idx"), "--queries",
                                               str(data / "queries.jsonl"), "-k", "100", "--run", str(work / "run.trec"),
                                               "--precision", "bf16"]),
    ]:
        row = run_stage(cmd, work / f"{re.sub(r'[^a-z0-9]+', '-', name.lower())}.log", env)
        row["us_per_doc"] = round(row["seconds"] / n * 1e6, 1)
        results.setdefault(name, {})[str(n)] = row
        print(f"{n:>9,}  {name:<34} {row['seconds']:>8.1f}s  {row['peak_rss_mib']:>8.0f} MiB", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=REPO / "out" / "scale")
    ap.add_argument("--model", default=None, help="Encoder (default: a random 1-layer BERT, hidden 384).")
    ap.add_argument("--stages", nargs="*", default=None, help="Run only stages whose name contains one of these.")
    ap.add_argument("--keep", action="store_true", help="Keep indexes and embeddings (default: delete after a size).")
    ap.add_argument("--real", action="store_true", help="Also run MiniLM over the 139k-sentence corpus (ann.py's).")
    ap.add_argument("--markdown", action="store_true", help="Only print OUT/results.json as a Markdown table.")
    args = ap.parse_args()
    if args.markdown:
        print_markdown(json.loads((args.out / "results.json").read_text()))
        return
    bin_dir = Path(sys.executable).parent
    retr, py = str(bin_dir / "retr"), sys.executable
    args.out.mkdir(parents=True, exist_ok=True)
    model = args.model
    if model is None:
        model = str(args.out / "tiny-384")
        if not Path(model).exists():
            subprocess.run([retr, "init-model", "-o", model, "--layers", "1", "--hidden", "384", "--heads", "6",
                            "--max-length", "128"], check=True)
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    sentences = None
    env = {"RETR_CACHE_DIR": str(args.out / "cache"), "HF_HUB_OFFLINE": "1"}
    for n in args.sizes:
        data = args.out / f"data-{n}"
        if not (data / "DONE").exists():
            sentences = sentences or shared_sentences(args.data)
            t0 = time.perf_counter()
            make_dataset(data, n, sentences)
            print(f"generated {data} in {time.perf_counter() - t0:.0f}s", flush=True)
        work = args.out / f"work-{n}"
        work.mkdir(exist_ok=True)
        for name, cmd, out in stages(data, work, model, retr, py, n, set(args.stages) if args.stages else None):
            if out is not None and Path(out).exists():
                subprocess.run(["rm", "-rf", str(out)], check=True)
            if "encode (retr encode)" in name:
                subprocess.run(["rm", "-rf", str(work / "emb")], check=True)
            if "Tevatron" in name:
                make_tevatron(work / "tevatron.jsonl", data, n // 2)
            row = run_stage(cmd, work / f"{re.sub(r'[^a-z0-9]+', '-', name.lower())}.log", env)
            row["us_per_doc"] = round(row["seconds"] / n * 1e6, 1)
            if out is not None:
                row["bytes"] = dir_bytes(out)
            results.setdefault(name, {})[str(n)] = row
            print(f"{n:>9,}  {name:<34} {row['seconds']:>8.1f}s  {row['peak_rss_mib']:>8.0f} MiB"
                  + (f"  {row['bytes'] / 2**20:>8.0f} MiB on disk" if "bytes" in row else ""), flush=True)
            results_path.write_text(json.dumps(results, indent=2))
        if not args.keep:
            subprocess.run(["rm", "-rf", str(work / "emb"), str(work / "idx-flat"), str(work / "bm25")], check=True)
    if args.real:
        real_model_run(args, retr, env, results)
        results_path.write_text(json.dumps(results, indent=2))
    print_table(results)


def print_table(results: dict) -> None:
    sizes = sorted({int(s) for rows in results.values() for s in rows})
    print(f"\n{'stage':<34}" + "".join(f"{f'{s:,}':>22}" for s in sizes))
    print(f"{'':<34}" + "".join(f"{'s / MiB / us/doc':>22}" for _ in sizes))
    for name, rows in results.items():
        cells = []
        for s in sizes:
            r = rows.get(str(s))
            cells.append(f"{r['seconds']:.0f} / {r['peak_rss_mib']:.0f} / {r['us_per_doc']:.0f}" if r else "-")
        print(f"{name:<34}" + "".join(f"{c:>22}" for c in cells))


def print_markdown(results: dict) -> None:
    """Per stage and size: wall seconds, peak RSS MiB and microseconds per document (as in RESULTS.md)."""
    sizes = sorted({int(s) for rows in results.values() for s in rows})
    print("| stage | " + " | ".join(f"{s:,}: s / MiB / µs per doc" for s in sizes) + " |")
    print("|---|" + "---:|" * len(sizes))
    for name, rows in results.items():
        cells = []
        for s in sizes:
            r = rows.get(str(s))
            cells.append(f"{r['seconds']:.1f} / {r['peak_rss_mib']:.0f} / {r['us_per_doc']:.0f}" if r else "–")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

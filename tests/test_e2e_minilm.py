"""End to end with the packaged all-MiniLM-L6-v2 on real SciFact (a subset, for speed): `retr eval` gives the
same nDCG@10 as sentence-transformers' own encode + exact search, and the written run re-scores identically."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def scifact_subset(scifact_dir, tmp_path_factory):
    """40 test queries, their judged documents and 260 other documents, as a BEIR folder."""
    from retr.retriever.data import load_beir

    ds = load_beir(scifact_dir, "test")
    qids = sorted(ds.qrels)[:40]
    judged = sorted({d for q in qids for d in ds.qrels[q]})
    rng = np.random.default_rng(0)
    others = [d for d in rng.permutation(list(ds.corpus.ids)) if d not in set(judged)][:260]
    out = tmp_path_factory.mktemp("scifact-subset")
    with open(out / "corpus.jsonl", "w") as fh:
        for d in judged + others:
            i = ds.corpus.index_of(d)
            fh.write(json.dumps({"_id": d, "title": ds.corpus.titles[i], "text": ds.corpus.texts[i]}) + "\n")
    with open(out / "queries.jsonl", "w") as fh:
        for q in qids:
            fh.write(json.dumps({"_id": q, "text": ds.queries[q]}) + "\n")
    (out / "qrels").mkdir()
    with open(out / "qrels" / "test.tsv", "w", newline="") as fh:
        fh.write("query-id\tcorpus-id\tscore\r\n")
        for q in qids:
            for d, s in ds.qrels[q].items():
                fh.write(f"{q}\t{d}\t{s}\r\n")
    return out


def test_retr_eval_matches_sentence_transformers(scifact_subset, tmp_path, capsys):
    import pytrec_eval
    from sentence_transformers import SentenceTransformer

    from retr.retriever.data import load_beir
    from retr.retriever.modeling import packaged_minilm_path

    code, out, err = run_cli(["eval", "-m", "minilm", "-d", scifact_subset, "-o", tmp_path / "r.json",
                              "--run", tmp_path / "r.trec", "-i", tmp_path / "idx"], capsys)
    assert code == 0, err
    ours = json.loads((tmp_path / "r.json").read_text())["metrics"]

    ds = load_beir(scifact_subset, "test")
    st = SentenceTransformer(packaged_minilm_path(), device="cpu")
    docs = st.encode(ds.corpus.passages(), batch_size=32, normalize_embeddings=True)
    qids = list(ds.eval_queries)
    qv = st.encode([ds.queries[q] for q in qids], batch_size=32, normalize_embeddings=True)
    scores = qv @ docs.T
    run = {q: {ds.corpus.ids[j]: float(scores[i, j]) for j in np.argsort(-scores[i])[:100]} for i, q in enumerate(qids)}
    per = pytrec_eval.RelevanceEvaluator(ds.qrels, {"ndcg_cut.10"}).evaluate(run)
    st_ndcg = np.mean([v["ndcg_cut_10"] for v in per.values()])
    assert ours["nDCG@10"] == pytest.approx(st_ndcg, abs=1e-3)
    assert ours["nDCG@10"] > 0.6  # MiniLM is strong on SciFact; a broken pipeline scores far lower

    # the index directory is reused (no re-encoding) and gives the same numbers
    code, out, err = run_cli(["eval", "-d", scifact_subset, "-i", tmp_path / "idx", "-o", tmp_path / "r2.json"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "r2.json").read_text())["metrics"] == ours

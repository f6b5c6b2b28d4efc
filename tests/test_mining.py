"""Mining streams block by block and never writes a judged positive, the query's own id, or a copy of a positive."""
from __future__ import annotations

import json

from conftest import run_cli, write_beir
from retr.retriever.data import load_beir
from retr.retriever.mining import MiningConfig, MiningStats, iter_mined, mine_negatives
from retr.retriever.modeling import DualEncoder
from retr.retriever.search import DenseRetriever


def _data(tmp_path):
    docs = [("d00", "Aspirin", "Aspirin reduces heart attacks."), ("d00b", "Aspirin", "Aspirin  reduces heart attacks. "),
            ("d00c", "aspirin", "aspirin reduces heart attacks."), ("d01", "Salt", "Salt raises blood pressure."),
            *[(f"x{i}", "", f"filler passage number {i} about topic {i % 5}") for i in range(20)]]
    queries = [("q1", "aspirin heart"), ("q2", "salt pressure")]
    qrels = [("q1", "d00", 1), ("q2", "d01", 1)]
    return write_beir(tmp_path / "m", docs=docs, queries=queries, qrels=qrels)


def test_copies_of_a_positive_are_not_negatives(tmp_path, tiny_model_dir, capsys):
    """Case mined-negative-equals-positive: d00b/d00c hold q1's positive text under other ids."""
    data = _data(tmp_path)
    code, out, err = run_cli(["mine", "-d", data, "--split", "test", "--teacher", tiny_model_dir, "--range-min", "1",
                              "--range-max", "100", "--num-negatives", "0", "-o", tmp_path / "mined.jsonl"], capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in (tmp_path / "mined.jsonl").read_text().splitlines()]
    q1 = next(r for r in rows if r["query_id"] == "q1")
    negs = {n["docid"] for n in q1["negative_passages"]}
    assert not negs & {"d00", "d00b", "d00c"}
    assert len(negs) == 21  # every other document of the corpus: the window is the whole ranking
    assert "2 copies of a positive dropped" in " ".join(out.split())


def test_streaming_blocks_equal_one_block(tmp_path, tiny_model_dir):
    ds = load_beir(_data(tmp_path), "test")
    teacher = DenseRetriever.build(DualEncoder.from_pretrained(tiny_model_dir), ds.corpus, show_progress=False)
    cfg = MiningConfig(range_min=2, range_max=10, num_negatives=3, seed=1)
    stats = MiningStats()
    one = [e.to_tevatron() for e in iter_mined(teacher, ds, cfg, block_size=1, stats=stats)]
    assert one == [e.to_tevatron() for e in mine_negatives(teacher, ds, cfg)]
    assert stats.queries == 2 and stats.negatives == sum(len(e["negative_passages"]) for e in one) == 6

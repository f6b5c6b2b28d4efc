"""Training / evaluation overlap: exact and near-duplicate queries and passages (``retr audit``).

Training data can be a BEIR folder (the queries judged in a split and their judged-relevant passages), a
Tevatron JSONL file (what ``retr mine`` writes: query, positive and mined negative passages), any JSONL whose
lines carry a ``query`` and lists of passages (``positive_passages``, ``negative_passages``, ``passages``,
``positives``, ``negatives``, ``pos``, ``neg``: distillation files, B3-batched training pairs), or a text file
(one passage a line, as unsupervised Contriever training reads). The evaluation side is a BEIR split: its
judged queries and the passages judged relevant to them. Passages are compared by their text without the
title (training files often drop titles; a title alone rarely makes two passages the same).

* **Exact**: the same text after normalisation (Unicode NFKC, case-folded, punctuation dropped, whitespace
  collapsed), compared by a 64-bit blake2b hash of it.
* **Near**: Jaccard similarity of character 5-gram sets >= ``threshold``, found with MinHash + LSH
  (Broder 1997; Leskovec, Rajaraman & Ullman, *Mining of Massive Datasets* ch. 3) from ``datasketch``, a
  well-kept library, and confirmed with the MinHash estimate of the Jaccard similarity.

Memory: the evaluation side is held as hashes and MinHash signatures, O(eval items x num_perm) 64-bit
values (~1 KiB an item at 128 permutations, e.g. 50 MiB for 50,000 judged passages); the training side is
streamed item by item (texts seen once are skipped by their hash, a set that grows 8 bytes per distinct
training text), so an 8.8M-passage training file costs time, not memory.
"""
from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from retr.retriever.data.errors import DataError, malformed_json

_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)
_SPACE = re.compile(r"\s+")
PASSAGE_KEYS = ("positive_passages", "negative_passages", "passages", "positives", "negatives", "pos", "neg")


def normalise(text: str) -> str:
    """NFKC, case-folded, punctuation removed, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return _SPACE.sub(" ", _PUNCT.sub(" ", text)).strip()


def text_hash(text: str) -> int:
    """64-bit hash of the normalised text (exact-duplicate key)."""
    return int.from_bytes(hashlib.blake2b(normalise(text).encode(), digest_size=8).digest(), "big")


def shingles(text: str, n: int = 5) -> set[bytes]:
    norm = normalise(text)
    if len(norm) <= n:
        return {norm.encode()}
    return {norm[i:i + n].encode() for i in range(len(norm) - n + 1)}


@dataclass
class AuditConfig:
    threshold: float = 0.7  # Jaccard of character 5-grams for a near duplicate
    num_perm: int = 128
    shingle: int = 5
    max_examples: int = 5
    near: bool = True  # False: exact duplicates only (no datasketch needed; used for leaderboard flags)
    seed: int = 1


@dataclass
class Item:
    kind: str  # "query" | "passage"
    id: str
    text: str
    source: str = ""


def iter_training_items(path: str | Path, split: str = "train") -> Iterator[Item]:
    """Queries and passages of one training source (see the module docstring), streamed."""
    path = Path(path)
    if path.is_dir():
        yield from _beir_items(path, split, relevant_only=True)
        return
    if not path.exists():
        raise DataError(path, None, "training data not found")
    src = str(path)
    with open(path, encoding="utf-8-sig") as fh:
        if path.suffix not in (".jsonl", ".json"):
            for line_no, line in enumerate(fh, 1):
                if line.strip():
                    yield Item("passage", f"line{line_no}", line.strip(), src)
            return
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(path, line_no, malformed_json(e)) from None
            if not isinstance(obj, dict) or "query" not in obj:
                raise DataError(path, line_no, 'missing field "query"')
            if not isinstance(obj["query"], str):
                raise DataError(path, line_no, f'field "query" must be a string, got {type(obj["query"]).__name__}')
            yield Item("query", str(obj.get("query_id", f"line{line_no}")), obj["query"], src)
            for key in PASSAGE_KEYS:
                items = obj.get(key, [])
                if not isinstance(items, list):
                    raise DataError(path, line_no, f'field "{key}" must be a list')
                for j, p in enumerate(items):
                    text = p if isinstance(p, str) else (p.get("text") if isinstance(p, dict) else None)
                    if not isinstance(text, str):
                        raise DataError(path, line_no, f'field "{key}[{j}]" must be a string or have a "text"')
                    docid = str(p.get("docid", "")) if isinstance(p, dict) else ""
                    yield Item("passage", docid or f"line{line_no}:{key}[{j}]", text, src)


def _beir_items(path: Path, split: str, relevant_only: bool = True) -> Iterator[Item]:
    from retr.retriever.data.beir import load_beir

    ds = load_beir(path, split, allow_missing_docs=True)
    src = f"{path}:{split}"
    for qid, text in ds.eval_queries.items():
        yield Item("query", qid, text, src)
    seen = set()
    for qid, judged in ds.qrels.items():
        for docid, grade in judged.items():
            if docid in seen or (relevant_only and grade <= 0) or docid not in ds.corpus:
                continue
            seen.add(docid)
            i = ds.corpus.index_of(docid)
            yield Item("passage", docid, ds.corpus.texts[i] or ds.corpus.titles[i], src)


@dataclass
class _Side:
    """The evaluation side of one kind: hashes, signatures, LSH, and what matched."""

    items: dict[str, str] = field(default_factory=dict)  # id -> text (examples)
    by_hash: dict[int, list[str]] = field(default_factory=dict)
    lsh: Any = None
    sigs: dict[str, Any] = field(default_factory=dict)
    exact: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # eval id -> (source, train id, text)
    near: dict[str, tuple[str, str, str, float]] = field(default_factory=dict)


def _minhash(text: str, cfg: AuditConfig):
    from datasketch import LeanMinHash, MinHash

    m = MinHash(num_perm=cfg.num_perm, seed=cfg.seed)
    m.update_batch(list(shingles(text, cfg.shingle)))
    return LeanMinHash(m)


def audit(train: Iterable[str | Path], eval_dir: str | Path, eval_split: str = "test", train_split: str = "train",
          cfg: AuditConfig | None = None) -> dict[str, Any]:
    """Count evaluation queries and judged-relevant passages of ``eval_dir``/``eval_split`` that have an
    exact or near duplicate among the training sources ``train``; returns the report (counts, examples)."""
    cfg = cfg or AuditConfig()
    if not 0.0 < cfg.threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {cfg.threshold}")
    sides = {"query": _Side(), "passage": _Side()}
    if cfg.near:
        from datasketch import MinHashLSH

        for side in sides.values():
            # LSH bands tuned for recall (false negatives weigh 0.9): every candidate is checked against the
            # threshold anyway, so extra candidates cost time, not precision (98% recall at Jaccard 0.75 for 0.7)
            side.lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm, weights=(0.1, 0.9))
    for item in _beir_items(Path(eval_dir), eval_split, relevant_only=True):
        side = sides[item.kind]
        side.items[item.id] = item.text
        side.by_hash.setdefault(text_hash(item.text), []).append(item.id)
        if cfg.near:
            side.sigs[item.id] = _minhash(item.text, cfg)
            side.lsh.insert(item.id, side.sigs[item.id])
    seen: set[tuple[str, int]] = set()
    counts = {"query": 0, "passage": 0}
    for source in train:
        n_items = 0
        for item in iter_training_items(source, train_split):
            n_items += 1
            counts[item.kind] += 1
            h = text_hash(item.text)
            if (item.kind, h) in seen:
                continue
            seen.add((item.kind, h))
            side = sides[item.kind]
            for eid in side.by_hash.get(h, ()):
                side.exact.setdefault(eid, (item.source, item.id, item.text))
                side.near.pop(eid, None)  # an exact match found after a near one: count it once, as exact
            if cfg.near and side.sigs:
                m = _minhash(item.text, cfg)
                for eid in side.lsh.query(m):
                    if eid in side.exact or eid in side.near:
                        continue
                    j = float(m.jaccard(side.sigs[eid]))
                    if j >= cfg.threshold:
                        side.near[eid] = (item.source, item.id, item.text, j)
        if not n_items:  # a clean report on nothing read would read as "no overlap"
            raise DataError(source, None, "no queries or passages in the training data")
    report: dict[str, Any] = {"eval": str(eval_dir), "eval_split": eval_split, "train": [str(t) for t in train],
                              "train_split": train_split, "threshold": cfg.threshold, "num_perm": cfg.num_perm,
                              "method": "exact: normalised-text hash; near: MinHash/LSH over character "
                                        f"{cfg.shingle}-grams" if cfg.near else "exact: normalised-text hash"}
    for kind, side in sides.items():
        examples = [{"eval_id": e, "eval_text": side.items[e][:200], "train_source": s, "train_id": t,
                     "train_text": x[:200], "match": "exact"} for e, (s, t, x) in list(side.exact.items())[:cfg.max_examples]]
        examples += [{"eval_id": e, "eval_text": side.items[e][:200], "train_source": s, "train_id": t,
                      "train_text": x[:200], "match": f"near (Jaccard ~{j:.2f})"}
                     for e, (s, t, x, j) in list(side.near.items())[:cfg.max_examples]]
        report["queries" if kind == "query" else "passages"] = {"eval": len(side.items), "train_seen": counts[kind], "exact": len(side.exact),
                              "near": len(side.near), "any": len(side.exact) + len(side.near),
                              "exact_ids": sorted(side.exact), "near_ids": sorted(side.near), "examples": examples}
    return report


def recorded_training_data(model: str | None) -> tuple[list[str], str] | None:
    """The training sources and split recorded by ``retr train`` in ``meta.json`` beside a model directory
    (``<run>/model`` -> ``<run>/meta.json``), or None when the model has no such record."""
    if not model:
        return None
    path = Path(model)
    for meta in (path / "meta.json", path.parent / "meta.json"):
        if meta.is_file():
            try:
                data = json.loads(meta.read_text())
            except (OSError, ValueError):
                continue
            cfg = data.get("config") if isinstance(data, dict) else None
            if data.get("made_by") == "retr train" and isinstance(cfg, dict) and cfg.get("train_data"):
                sources = list(cfg["train_data"]) + ([cfg["negatives_file"]] if cfg.get("negatives_file") else [])
                return sources, str(cfg.get("train_split", "train"))
    return None


def training_overlap(models: Iterable[str | None], dataset) -> dict[str, Any] | None:
    """Exact query overlap between the recorded training data of ``models`` and ``dataset``'s judged queries
    (a loaded ``BeirDataset``): {"queries": n, "train_data": [...]}, or None when no model records any.
    Sources that no longer exist are listed under "missing"."""
    sources, missing, split = [], [], "train"
    for model in models:
        rec = recorded_training_data(model)
        if rec:
            for s in rec[0]:
                (sources if Path(s).exists() else missing).append(s)
            split = rec[1]
    if not sources and not missing:
        return None
    eval_hashes: dict[int, list[str]] = {}  # several evaluation queries may share one text
    for q, t in dataset.eval_queries.items():
        eval_hashes.setdefault(text_hash(t), []).append(q)
    hit: set[str] = set()
    for source in list(sources):
        try:
            for item in iter_training_items(source, split):
                if item.kind == "query":
                    hit.update(eval_hashes.get(text_hash(item.text), ()))
        except DataError:  # e.g. the recorded split is gone: say so rather than fail the leaderboard
            sources.remove(source)
            missing.append(source)
    return {"queries": len(hit), "train_data": sources, "missing": missing}

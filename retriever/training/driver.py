"""Wire a ``TrainConfig`` into a ``Trainer``: model, examples, task, sampler, collator. The CLI (`retr train`) and
torchrun both come through here."""
from __future__ import annotations

import logging

import numpy as np
from pathlib import Path
from typing import Callable

from ..data.beir import load_beir
from ..data.contriever import ContrieverPairs, CropConfig, corpus_tokens, make_chunks
from ..data.examples import BeirExamples, ConcatExamples
from ..data.training import TrainExample, as_pairs, read_tevatron
from ..losses.infonce import InfoNCELoss
from ..losses.listwise import ListwiseSoftmaxLoss, PointwiseBCELoss
from ..losses.matryoshka import MatryoshkaLoss
from ..losses.moco import MoCoLoss
from ..modeling.cross_encoder import CrossEncoder
from ..modeling.dual_encoder import DualEncoder
from ..modeling.hf_switches import enable_gradient_checkpointing
from .arguments import TrainConfig
from .collator import CropPairCollator, RerankCollator, SupervisedCollator
from .distributed import DistInfo
from .samplers import BatchSampler, RandomBatchSampler
from .tasks import InBatchTask, MoCoTask, RerankTask
from .trainer import Trainer

log = logging.getLogger(__name__)


def load_model(cfg: TrainConfig) -> DualEncoder | CrossEncoder:
    if cfg.mode == "reranker":
        import torch

        torch.manual_seed(cfg.seed)  # the fresh scoring head is initialised here
        return CrossEncoder.from_pretrained(cfg.model, max_length=cfg.passage_max_length, head=cfg.ce_head,
                                          head_scale=cfg.ce_scale)
    overrides = {k: getattr(cfg, k) for k in ("pooling", "normalize", "query_prefix", "passage_prefix",
                                               "query_max_length", "passage_max_length", "torch_dtype")
                 if getattr(cfg, k) is not None}
    if cfg.query_instruction is not None or cfg.task is not None:
        from ..modeling.decoder import format_instruction

        if cfg.query_prefix is not None:
            raise ValueError("give --query-prefix or --query-instruction, not both")
        if cfg.query_instruction is None:
            raise ValueError("--task fills {task} in --query-instruction: give that too")
        overrides["query_prefix"] = format_instruction(cfg.query_instruction, cfg.task)
    return DualEncoder.from_pretrained(cfg.model, separate=cfg.separate_towers, **overrides)


def hf_towers(model: DualEncoder | CrossEncoder) -> list:
    """The Hugging Face models inside a retr model (one per tower)."""
    if isinstance(model, DualEncoder):
        return [model.query_encoder.model] + ([] if model.shared else [model.passage_encoder.model])
    return [model.model]


def supervised_examples(cfg: TrainConfig):
    """The training examples as a lazy sequence: per example, memory holds a byte offset (Tevatron JSONL) or a
    query id and negative rows (BEIR + mined file), never the passages (see ``data/examples.py``)."""
    if not cfg.train_data:
        raise ValueError("no training data: pass --data (BEIR folder or Tevatron JSONL)")
    parts = []
    for path in map(Path, cfg.train_data):
        if path.is_dir():
            ds = load_beir(path, cfg.train_split, allow_missing_docs=True)
            parts.append(BeirExamples(ds, cfg.negatives_file))
        else:
            parts.append(read_tevatron(path))
    examples = ConcatExamples(parts)
    if cfg.pairs:
        examples = as_pairs(examples)
    log.info("%d training examples", len(examples))
    return examples


def build_trainer(cfg: TrainConfig, dist: DistInfo | None = None, model: DualEncoder | None = None,
                  eval_fn: Callable | None = None, sampler: BatchSampler | None = None) -> Trainer:
    model = model or load_model(cfg)
    if cfg.gradient_checkpointing:
        for tower in hf_towers(model):
            enable_gradient_checkpointing(tower)
    if cfg.mode == "supervised":
        examples = supervised_examples(cfg)
        collate = SupervisedCollator(model, examples, n_negatives=cfg.train_negatives, seed=cfg.seed)
        fingerprint = _fingerprint((e.query_id, e.query, [p.docid for p in e.positives + e.negatives]) for e in examples)
        task = InBatchTask(in_batch_loss(cfg, model))
        n = len(examples)
    elif cfg.mode == "unsupervised":
        crop = CropConfig(cfg.chunk_length, cfg.ratio_min, cfg.ratio_max, cfg.deletion_prob)
        tok = model.query_encoder.tokenizer
        store = _token_store(cfg, tok, dist or DistInfo())
        chunks = make_chunks(store, cfg.chunking, crop, seed=cfg.seed)
        log.info("%d documents, %d tokens -> %d %s chunks of up to %d tokens", store.num_documents, store.num_tokens,
                 len(chunks), cfg.chunking, crop.chunk_length)
        pairs = ContrieverPairs(chunks, tok.cls_token_id, tok.sep_token_id, crop, seed=cfg.seed)
        fingerprint = _fingerprint([store.key, cfg.chunking, crop.chunk_length, crop.min_chunk_tokens])
        collate = CropPairCollator(pairs, tok.pad_token_id or 0)
        if cfg.moco:
            # under GradCache, keys and the loss's logits are computed chunk by chunk too (memory of one chunk)
            loss = MoCoLoss(model.dim, cfg.queue_size, cfg.temperature, cfg.similarity,
                            row_chunk=cfg.gc_query_chunk if cfg.grad_cache else None, queue_init=cfg.queue_init,
                            seed=cfg.seed)
            task = MoCoTask(loss, model, cfg.momentum, key_chunk=cfg.gc_passage_chunk if cfg.grad_cache else None)
        else:
            task = InBatchTask(in_batch_loss(cfg, model))
        n = len(pairs)
    else:  # reranker: a cross-encoder over (query, positive, negatives) groups
        examples = supervised_examples(cfg)
        collate = RerankCollator(model, examples, n_negatives=cfg.train_negatives, seed=cfg.seed,
                                 n_random=cfg.train_random_negatives)
        fingerprint = _fingerprint((e.query_id, e.query, [p.docid for p in e.positives + e.negatives]) for e in examples)
        group = 1 + cfg.train_negatives + cfg.train_random_negatives
        task = RerankTask(PointwiseBCELoss(group) if cfg.ce_loss == "bce" else ListwiseSoftmaxLoss(group))
        n = len(examples)
    if sampler is None and cfg.batching == "b3":
        if cfg.mode == "unsupervised":
            raise ValueError("B3 batching needs (query, positive) examples: use --mode supervised or reranker")
        sampler = b3_sampler(examples, cfg, dist or DistInfo())
    sampler = sampler or RandomBatchSampler(n, cfg.batch_size, seed=cfg.seed)
    trainer = Trainer(model, task, collate, sampler, cfg, dist=dist, eval_fn=eval_fn)
    trainer.data_fingerprint = fingerprint
    return trainer


def in_batch_loss(cfg: TrainConfig, model: DualEncoder):
    """InfoNCE, wrapped in ``MatryoshkaLoss`` when ``cfg.matryoshka_dims`` is set (prefixes re-normalised when the
    encoder normalises, as ``truncate_dim`` does at search time)."""
    loss = InfoNCELoss(cfg.temperature, cfg.learnable_temperature, cfg.symmetric, cfg.similarity)
    if not cfg.matryoshka_dims:
        return loss
    too_long = [d for d in cfg.matryoshka_dims if d > model.dim]
    if too_long:
        raise ValueError(f"--matryoshka-dims {too_long[0]} is more than the model's {model.dim} dimensions")
    return MatryoshkaLoss(loss, cfg.matryoshka_dims, cfg.matryoshka_weights,
                          renormalize=model.query_encoder.config.normalize)


def _token_store(cfg: TrainConfig, tokenizer, dist: DistInfo):
    """The training corpus tokenised once (cached on disk); under DDP rank 0 builds it, the others then open it."""
    from .distributed import barrier

    if dist.is_main:
        store = corpus_tokens(cfg.train_data, tokenizer, cfg.token_cache)
    barrier(dist)
    if not dist.is_main:
        store = corpus_tokens(cfg.train_data, tokenizer, cfg.token_cache)
    return store


def _fingerprint(parts) -> str:
    import hashlib

    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else str(part).encode())
    return h.hexdigest()[:16]


def b3_sampler(examples: list[TrainExample], cfg: TrainConfig, dist: DistInfo):
    """Mine (or load from cache) B3 clusters with the teacher and log the mining report."""
    import os

    from .b3 import (B3BatchSampler, B3Config, cached_clusters, data_fingerprint, in_batch_negative_similarity,
                     mine_clusters, size_histogram)
    from .distributed import barrier

    b3 = B3Config(p=cfg.b3_p, m=cfg.b3_m, cluster_size=cfg.b3_cluster_size, algorithm=cfg.b3_algorithm, seed=cfg.seed)
    teacher = DualEncoder.from_pretrained(cfg.b3_teacher)
    queries = [e.query for e in examples]
    query_ids = [e.query_id for e in examples]  # pairs of one query are no negatives for each other
    sep = teacher.passage_tower.config.title_sep
    positives = [[p.joined(sep) for p in e.positives] for e in examples]
    cache = cfg.b3_cache or os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "retr", "b3")
    data_key = {"teacher": teacher.fingerprint(), "data": data_fingerprint(queries, ["\2".join(p) for p in positives])}
    key = {**data_key, **b3.__dict__, "grouped_by_query": True}
    emb: dict[str, np.ndarray] = {}

    def compute():
        emb.update(_teacher_embeddings(teacher, queries, positives, cache, data_key))
        return mine_clusters(emb["q"], emb["p"], b3, groups=query_ids)

    if dist.is_main:
        clusters, stats = cached_clusters(cache, key, compute)
    barrier(dist)
    if not dist.is_main:
        clusters, stats = cached_clusters(cache, key, compute)
    sampler = B3BatchSampler(clusters, cfg.batch_size, seed=cfg.seed)
    report = {**stats, "size_histogram": size_histogram(clusters)}
    if emb:
        rand = RandomBatchSampler(len(examples), cfg.batch_size, seed=cfg.seed).batches(0)
        report["mean_in_batch_negative_similarity"] = {
            "b3": round(in_batch_negative_similarity(emb["q"], emb["p"], sampler.batches(0), query_ids), 4),
            "random": round(in_batch_negative_similarity(emb["q"], emb["p"], rand, query_ids), 4)}
    log.info("B3: %s", report)
    return sampler


def _encode_unique(encode, texts: list[str]) -> np.ndarray:
    """Encode each distinct text once (pairs repeat queries; positives repeat across queries)."""
    uniq = list(dict.fromkeys(texts))
    vecs = encode(uniq, show_progress=True)
    pos = {t: i for i, t in enumerate(uniq)}
    return vecs[[pos[t] for t in texts]]


def _teacher_embeddings(teacher: DualEncoder, queries: list[str], positives: list[list[str]], cache: str,
                        data_key: dict) -> dict[str, np.ndarray]:
    """Teacher embeddings of the examples, cached (npz, no pickle) so other seeds / p / m / K reuse them.

    An example with several positives is represented by their mean embedding: the collator draws one of them at
    random each epoch, so q . mean is the expected similarity to the positive it will show in a batch (with the
    first positive alone, NFCorpus's 43 positives per query made the mined hardness a poor guess)."""
    import hashlib
    import json
    import os

    key = hashlib.sha256(json.dumps(data_key, sort_keys=True).encode()).hexdigest()[:16]
    path = os.path.join(cache, f"b3-emb-{key}.npz")
    if os.path.exists(path):
        with np.load(path, allow_pickle=False) as data:
            return {"q": data["q"], "p": data["p"]}
    flat = _encode_unique(teacher.encode_passages, [t for texts in positives for t in texts])
    starts = np.cumsum([0] + [len(texts) for texts in positives])
    out = {"q": _encode_unique(teacher.encode_queries, queries),
           "p": (np.add.reduceat(flat, starts[:-1], axis=0) / np.diff(starts)[:, None]).astype(np.float32)}
    from retr.indexing.atomic import atomic_file

    os.makedirs(cache, exist_ok=True)
    with atomic_file(path, "wb") as fh:
        np.savez(fh, **out)
    return out

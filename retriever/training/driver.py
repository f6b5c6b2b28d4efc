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
    """The Hugging Face models inside a retr model (one per tower; under a LoRA wrapper, the model it wraps)."""
    from ..modeling.lora import base_hf_model, holders

    return [base_hf_model(h.model) for h in holders(model)]


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
    from ..modeling.lora import add_lora, has_lora, parameter_counts

    if has_lora(model):  # issue 19: its base is frozen and its adapter loaded for inference
        raise ValueError(f"--model {cfg.model} is a LoRA adapter: train from its merged model "
                         "(what --merge-lora writes) instead")
    if cfg.lora_r:  # issue 19: freeze the base model, train LoRA adapters (seeded: the same on every rank)
        add_lora(model, cfg.lora_settings(), seed=cfg.seed)
        log.info("LoRA r=%d: %s parameters", cfg.lora_r, parameter_counts(model))
    if cfg.distill:  # issue 20: teacher scores -> dual encoder or cross-encoder
        examples, collate, task, fingerprint = distill_parts(cfg, model)
        n = len(examples)
    elif cfg.mode == "supervised":
        examples = supervised_examples(cfg)
        sampler, examples = _b3_before_collator(examples, cfg, dist, sampler)  # issue 21: cluster negatives
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
        sampler, examples = _b3_before_collator(examples, cfg, dist, sampler)  # issue 21: cluster negatives
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


def distill_parts(cfg: TrainConfig, model):
    """(examples, collator, task, fingerprint) of distillation from ``cfg.teacher_scores`` (issue 20)."""
    from ..data.examples import TevatronFile
    from ..losses.distill import distill_loss
    from .distill import DistillCollator, DistillRerankTask, DistillTask

    examples = TevatronFile(cfg.teacher_scores, require_scores=True)  # every passage scored (file/line errors)
    if cfg.pairs:
        examples = as_pairs(examples)
    cross = cfg.mode == "reranker"
    collate = DistillCollator(model, examples, n_negatives=cfg.train_negatives, seed=cfg.seed, cross=cross)
    loss = distill_loss(cfg.distill, cfg.teacher_temperature)
    if cross:
        task = DistillRerankTask(loss, ListwiseSoftmaxLoss(1 + cfg.train_negatives), cfg.distill_infonce_weight)
    else:
        task = DistillTask(loss, in_batch_loss(cfg, model), cfg.distill_infonce_weight)
    fingerprint = _fingerprint((e.query_id, e.query, [(p.docid, p.score) for p in e.positives + e.negatives])
                               for e in examples)
    log.info("distilling (%s) from %s: %d examples", cfg.distill, cfg.teacher_scores, len(examples))
    return examples, collate, task, fingerprint


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


def _b3_before_collator(examples, cfg: TrainConfig, dist: DistInfo | None, sampler):
    """The B3 sampler, mined before the collator is built: with ``b3_cluster_negatives`` the examples' hard
    negatives become positives of their cluster negatives (``ClusterNegativeExamples``)."""
    if sampler is not None or cfg.batching != "b3":
        return sampler, examples
    sampler = b3_sampler(examples, cfg, dist or DistInfo())
    if cfg.b3_cluster_negatives:
        from .b3_authors import ClusterNegativeExamples

        examples = ClusterNegativeExamples(examples, sampler.negatives, seed=cfg.seed)
    return sampler, examples


def b3_config(cfg: TrainConfig):
    from .b3 import B3Config

    return B3Config(p=cfg.b3_p, m=cfg.b3_m, cluster_size=cfg.b3_cluster_size, algorithm=cfg.b3_algorithm,
                    seed=cfg.seed, mutual_edges=cfg.b3_mutual_edges, exact_k=cfg.b3_exact_k,
                    cluster_negatives=cfg.b3_cluster_negatives, sibling_exclusion=cfg.b3_sibling_exclusion)


def sibling_exclusion(examples) -> Callable[[int], np.ndarray]:
    """``exclude(i)``: the examples whose query shares a judged positive with example i's query (its
    siblings' examples, ``SiblingPositives.sharing_queries``). It depends on i's query id alone, which
    ``exclude.key`` (one query id per example) tells ``ranked_windows``, so a query's pairs are searched once.
    Memory: the judged pairs and a query -> examples map (O(judged pairs + examples)); each row's set is built
    on demand, by concatenating its sibling queries' row arrays."""
    from ..false_negatives import SiblingPositives

    rows_of: dict[str, list[int]] = {}
    qrels: dict[str, dict[str, int]] = {}
    for i, e in enumerate(examples):
        rows_of.setdefault(e.query_id, []).append(i)
        qrels.setdefault(e.query_id, {d: 1 for d in e.known_positives})
    siblings = SiblingPositives(qrels)
    qids = [e.query_id for e in examples]
    arrays = {q: np.asarray(r, np.int64) for q, r in rows_of.items()}
    empty = np.zeros(0, np.int64)

    def exclude(i: int) -> np.ndarray:
        sharing = siblings.sharing_queries(qids[i])
        return np.concatenate([arrays[q] for q in sharing]) if sharing else empty
    exclude.key = qids
    return exclude


def b3_sampler(examples: list[TrainExample], cfg: TrainConfig, dist: DistInfo):
    """Mine (or load from cache) B3 clusters with the teacher and log the mining report. The sampler's
    ``negatives`` holds the cluster negatives (example ids per example; empty unless b3_cluster_negatives)."""
    import os

    from ..data.corpus import cache_root
    from .b3 import (B3BatchSampler, cached_mining, data_fingerprint, in_batch_negative_similarity, mine_b3,
                     size_histogram)
    from .distributed import barrier

    b3 = b3_config(cfg)
    cache = cfg.b3_cache or str(cache_root() / "b3")  # $RETR_CACHE_DIR like every other retr cache
    try:  # before the teacher encodes: a cache path that is a file lost the whole mining at the end
        os.makedirs(cache, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--b3-cache {cache}: cannot be a cache directory ({e.strerror or e})") from None
    teacher = DualEncoder.from_pretrained(cfg.b3_teacher)
    queries = [e.query for e in examples]
    query_ids = [e.query_id for e in examples]  # pairs of one query are no negatives for each other
    sep = teacher.passage_tower.config.title_sep
    positives = [[p.joined(sep) for p in e.positives] for e in examples]
    data_key = {"teacher": teacher.fingerprint(), "data": data_fingerprint(queries, ["\2".join(p) for p in positives])}
    settings = {k: v for k, v in b3.__dict__.items()  # issue 21 options only when set: earlier caches stay valid
                if k not in ("mutual_edges", "exact_k", "cluster_negatives", "sibling_exclusion") or v}
    key = {**data_key, **settings, "grouped_by_query": True}
    emb: dict[str, np.ndarray] = {}

    def compute():
        emb.update(_teacher_embeddings(teacher, queries, positives, cache, data_key))
        exclude = sibling_exclusion(examples) if b3.sibling_exclusion else None
        return mine_b3(emb["q"], emb["p"], b3, groups=query_ids, exclude=exclude)

    check = dict(n=len(examples), want_negatives=b3.cluster_negatives > 0)
    if dist.is_main:
        clusters, stats, negatives = cached_mining(cache, key, compute, **check)
    barrier(dist)
    if not dist.is_main:
        clusters, stats, negatives = cached_mining(cache, key, compute, **check)
    sampler = B3BatchSampler(clusters, cfg.batch_size, seed=cfg.seed, clusters_per_batch=cfg.b3_clusters_per_batch)
    sampler.negatives = negatives
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
        import zipfile

        from retr.indexing.errors import ArtifactError

        try:
            with np.load(path, allow_pickle=False) as data:
                out = {"q": data["q"], "p": data["p"]}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise ArtifactError(f"{path}: damaged teacher embeddings ({e}): delete it to encode again") from None
        if out["q"].ndim != 2 or out["q"].shape != out["p"].shape:
            raise ArtifactError(f"{path}: teacher embeddings of shapes {out['q'].shape} and {out['p'].shape}: "
                                "delete it to encode again")
        return out
    flat = _encode_unique(teacher.encode_passages, [t for texts in positives for t in texts])
    starts = np.cumsum([0] + [len(texts) for texts in positives])
    out = {"q": _encode_unique(teacher.encode_queries, queries),
           "p": (np.add.reduceat(flat, starts[:-1], axis=0) / np.diff(starts)[:, None]).astype(np.float32)}
    from retr.indexing.atomic import atomic_file

    os.makedirs(cache, exist_ok=True)
    with atomic_file(path, "wb") as fh:
        np.savez(fh, **out)
    return out

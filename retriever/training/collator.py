"""Turn training examples into model inputs. Positive and negatives are picked per (seed, epoch, example),
so an epoch is reproducible and a resumed run sees the same batches."""
from __future__ import annotations

import hashlib
from typing import Any, Sequence

import numpy as np
import torch

from ..data.training import TrainExample
from ..modeling.dual_encoder import DualEncoder


def pick_group(examples: Sequence[TrainExample], i: int, epoch: int, n_negatives: int, seed: int,
               sep: str = " ", n_random: int = 0) -> tuple[str, list[str], list[str]]:
    """Query i's text, its passages [positive, negative x (n_negatives + n_random)] for this epoch and their docids.
    Mined negatives come first; examples with fewer than asked for are topped up with other examples' positives
    (random negatives), as Tevatron falls back to random negatives; ``n_random`` more random ones follow."""
    ex = examples[i]
    rng = np.random.default_rng([seed, epoch, i])
    chosen = [ex.positives[int(rng.integers(len(ex.positives)))]]
    negs = ex.negatives
    if n_negatives and len(negs) >= n_negatives:
        chosen += [negs[j] for j in rng.choice(len(negs), n_negatives, replace=False)]
    elif n_negatives:
        chosen += list(negs)
    want = 1 + n_negatives + n_random
    if len(chosen) < want:
        taken = set(ex.known_positives) | {p.docid for p in ex.positives} | {p.docid for p in chosen}
        for _ in range(100 * want):
            other = examples[int(rng.integers(len(examples)))].positives
            # top-ups alone take the first positive (as before, so earlier runs replay the same batches)
            cand = other[int(rng.integers(len(other)))] if n_random else other[0]
            if cand.docid not in taken:
                chosen.append(cand)
                taken.add(cand.docid)
                if len(chosen) == want:
                    break
        else:
            raise ValueError(f"too few distinct passages to draw {want - 1} negatives for query {ex.query_id!r}")
    return ex.query, [p.joined(sep) for p in chosen], [p.docid for p in chosen]


def doc_key(docid: str) -> int:
    """A stable 63-bit integer id of a docid (tensors can be gathered across ranks; strings cannot)."""
    return int.from_bytes(hashlib.blake2b(docid.encode(), digest_size=8).digest(), "little") & (2**63 - 1)


def known_positive_keys(examples: Sequence[TrainExample], indices: Sequence[int], width: int,
                        passage_ids: Sequence[str]) -> dict[str, torch.Tensor]:
    """The loss masks' inputs: ``positive_keys`` [Q, width] (-1 = padding), the keys of each query's judged
    positives, and ``passage_keys`` [P] of the batch's passages (-2 for a passage without an id)."""
    known = torch.full((len(indices), width), -1, dtype=torch.long)
    for row, i in enumerate(indices):
        keys = [doc_key(d) for d in examples[i].known_positives]
        known[row, : len(keys)] = torch.tensor(keys, dtype=torch.long)
    return {"positive_keys": known,
            "passage_keys": torch.tensor([doc_key(d) if d else -2 for d in passage_ids], dtype=torch.long)}


class SupervisedCollator:
    """Queries [B] and passages [B * (1 + n_negatives)], each query's positive first in its group; plus the keys
    that let the loss mask in-batch passages judged relevant to a query (``mask_known_positives``)."""

    def __init__(self, model: DualEncoder, examples: Sequence[TrainExample], n_negatives: int = 1, seed: int = 0,
                 mask_known_positives: bool = True):
        self.model, self.examples, self.n_negatives, self.seed = model, examples, n_negatives, seed
        self.sep = model.passage_tower.config.title_sep
        self.mask = mask_known_positives
        # fixed width so batches gather across ranks
        self.width = max((len(e.known_positives) for e in examples), default=1) or 1

    def __call__(self, indices: Sequence[int], epoch: int) -> dict[str, Any]:
        queries, passages, ids = [], [], []
        for i in indices:
            q, ps, pid = pick_group(self.examples, i, epoch, self.n_negatives, self.seed, self.sep)
            queries.append(q)
            passages.extend(ps)
            ids.extend(pid)
        batch = {"queries": dict(self.model.query_encoder.tokenize(queries, is_query=True)),
                 "passages": dict(self.model.passage_tower.tokenize(passages, is_query=False))}
        if self.mask:
            batch.update(known_positive_keys(self.examples, indices, self.width, ids))
        return batch


def pad_token_ids(seqs: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for j, s in enumerate(seqs):
        ids[j, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        mask[j, : len(s)] = 1
    return {"input_ids": ids, "attention_mask": mask}


class CropPairCollator:
    """Contriever pairs: crop A as "queries", crop B as "passages" (the MoCo keys, or in-batch positives).

    ``stats``: the crops' token counts (without [CLS]/[SEP], after word deletion) over both sides of the batch,
    min / max / mean, which the trainer logs to ``train_log.jsonl`` (``--ratio-min/--ratio-max``,
    ``--deletion-prob`` and ``--chunking`` seen in the run's own record)."""

    def __init__(self, pairs, pad_id: int):
        self.pairs, self.pad_id = pairs, pad_id

    def __call__(self, indices: Sequence[int], epoch: int) -> dict[str, Any]:
        self.pairs.set_epoch(epoch)
        a, b = zip(*(self.pairs[i] for i in indices))
        lengths = [len(x) - 2 for x in a + b]
        stats = {"crop_tokens_min": float(min(lengths)), "crop_tokens_max": float(max(lengths)),
                 "crop_tokens_mean": sum(lengths) / len(lengths)}
        return {"queries": pad_token_ids(a, self.pad_id), "passages": pad_token_ids(b, self.pad_id), "stats": stats}


class RerankCollator:
    """(query, passage) pairs [B * (1 + n)], each query's positive first, for listwise cross-encoder training; plus
    ``negative_mask`` [B, 1 + n] (``mask_known_positives``): True where a "negative" is a judged positive of the
    query (its docid is among the example's known positives), which the loss then leaves out."""

    def __init__(self, model, examples: Sequence[TrainExample], n_negatives: int, seed: int = 0, n_random: int = 0,
                 mask_known_positives: bool = True):
        if n_negatives + n_random < 1:
            raise ValueError("reranker training needs at least one negative per query (--train-negatives)")
        self.model, self.examples, self.n_negatives, self.seed, self.n_random = model, examples, n_negatives, seed, n_random
        self.mask = mask_known_positives

    def __call__(self, indices: Sequence[int], epoch: int) -> dict[str, Any]:
        queries, passages, masks = [], [], []
        for i in indices:
            q, ps, ids = pick_group(self.examples, i, epoch, self.n_negatives, self.seed, n_random=self.n_random)
            queries.extend([q] * len(ps))
            passages.extend(ps)
            known = set(self.examples[i].known_positives) | {ids[0]}
            masks.append([j > 0 and bool(d) and d in known for j, d in enumerate(ids)])
        batch = {"pairs": self.model.tokenize(queries, passages)}
        if self.mask:
            batch["negative_mask"] = torch.tensor(masks, dtype=torch.uint8)  # uint8: gathers over gloo
        return batch

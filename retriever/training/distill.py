"""Knowledge distillation from teacher scores (``retr score``) into a dual encoder or a cross-encoder
(``retr train --distill margin-mse|kl|soft-infonce --teacher-scores FILE``).

Each query's group is [positive, negative_1 .. negative_n] drawn from its scored passages (a random positive and
n negatives without replacement per epoch, as ``collator.pick_group``; with fewer than n scored negatives they
are drawn with replacement: every passage needs a teacher score, so no random top-ups). The student's group
scores are those the trainer trains anyway: for a dual encoder ``sim(q, p) / temperature`` of the query with
its own group's passages (the InfoNCE loss's ``scores``), for a cross-encoder its logit per pair. The loss is
``distill(student, teacher)`` (``losses/distill.py``) plus ``infonce_weight`` x the usual contrastive loss
(InfoNCE with in-batch negatives, or the cross-encoder's listwise softmax), 0 by default (pure distillation, as
Hofstätter et al. and Tevatron's distillation). ``soft-infonce`` (dual encoders) scores the query against the
whole batch instead, the teacher's distribution over its group in InfoNCE's one-hot label's place.

Works unchanged with GradCache (the loss is a function of the cached representations) and DDP (teacher scores
travel as extras, gathered like the representations). Memory: one batch's [B, 1 + n] teacher scores.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..data.training import TrainExample
from ..losses.distill import SoftInfoNCELoss
from ..losses.infonce import known_positive_mask
from .collator import known_positive_keys


def pick_scored_group(examples: Sequence[TrainExample], i: int, epoch: int, n_negatives: int,
                      seed: int) -> tuple[str, list, list[float]]:
    """Query i's text, passages [positive, negative x n] and their teacher scores for this epoch."""
    ex = examples[i]
    if not ex.negatives:
        raise ValueError(f"query {ex.query_id!r} has no scored negatives to distil from")
    rng = np.random.default_rng([seed, epoch, i])
    chosen = [ex.positives[int(rng.integers(len(ex.positives)))]]
    replace = len(ex.negatives) < n_negatives
    chosen += [ex.negatives[j] for j in rng.choice(len(ex.negatives), n_negatives, replace=replace)]
    scores = [p.score for p in chosen]
    if any(s is None for s in scores):
        raise ValueError(f"query {ex.query_id!r}: a passage has no teacher score")
    return ex.query, chosen, [float(s) for s in scores]


class DistillCollator:
    """Batches for distillation: ``teacher_scores`` [B, 1 + n] plus, for a dual encoder (``cross=False``), the
    queries [B] and passages [B * (1 + n)] with known-positive keys (as ``SupervisedCollator``), or for a
    cross-encoder the (query, passage) pairs [B * (1 + n)] (as ``RerankCollator``)."""

    def __init__(self, model, examples: Sequence[TrainExample], n_negatives: int, seed: int = 0, cross: bool = False):
        if n_negatives < 1:
            raise ValueError("distillation needs at least one negative per query (--train-negatives)")
        self.model, self.examples, self.n, self.seed, self.cross = model, examples, n_negatives, seed, cross
        self.sep = " " if cross else model.passage_tower.config.title_sep
        self.width = max((len(e.known_positives) for e in examples), default=1) or 1

    def __call__(self, indices: Sequence[int], epoch: int) -> dict[str, Any]:
        queries, passages, teacher, ids = [], [], [], []
        for i in indices:
            q, ps, scores = pick_scored_group(self.examples, i, epoch, self.n, self.seed)
            queries.append(q)
            passages.extend(p.joined(self.sep) for p in ps)
            ids.extend(p.docid for p in ps)
            teacher.append(scores)
        batch: dict[str, Any] = {"teacher_scores": torch.tensor(teacher, dtype=torch.float32)}
        if self.cross:
            group = 1 + self.n
            batch["pairs"] = self.model.tokenize([q for q in queries for _ in range(group)], passages)
            return batch
        batch["queries"] = dict(self.model.query_encoder.tokenize(queries, is_query=True))
        batch["passages"] = dict(self.model.passage_tower.tokenize(passages, is_query=False))
        batch.update(known_positive_keys(self.examples, indices, self.width, ids))
        return batch


class DistillTask(nn.Module):
    """Dual-encoder distillation: ``distill`` over each query's own group + ``infonce_weight`` x ``infonce``."""

    def __init__(self, distill: nn.Module, infonce: nn.Module, infonce_weight: float = 0.0):
        super().__init__()
        self.distill, self.loss, self.infonce_weight = distill, infonce, infonce_weight

    def towers(self, batch: dict[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
        return {"queries": batch["queries"], "passages": batch["passages"]}

    def extras(self, batch: dict[str, Any], model: nn.Module, device: torch.device) -> dict[str, torch.Tensor]:
        keys = ("teacher_scores", "positive_keys", "passage_keys")
        return {k: batch[k].to(device) for k in keys if k in batch}

    def compute_loss(self, reps: dict[str, torch.Tensor], extras: dict[str, torch.Tensor]) -> torch.Tensor:
        q, p = reps["queries"].float(), reps["passages"].float()
        teacher = extras["teacher_scores"]
        group = teacher.size(1)
        if p.size(0) != q.size(0) * group:
            raise ValueError(f"{p.size(0)} passages for {q.size(0)} queries in groups of {group}")
        if isinstance(self.distill, SoftInfoNCELoss):  # the teacher's labels over the whole batch
            scores = self.loss.scores(q, p)  # InfoNCE's own [Q, Q * G] scaled similarities
            mask = None
            keys = extras.get("passage_keys")
            if extras.get("positive_keys") is not None and keys is not None:
                target = torch.arange(q.size(0), device=q.device) * group
                mask = known_positive_mask(extras["positive_keys"], keys, target)
                # a copy of one of the query's own group passages elsewhere in the batch (a hard negative shared
                # with another query, --pairs) would be a zero-probability twin of a passage the teacher scored:
                # it leaves the softmax, or it shifts the learnt margins by log(copies)
                own = keys.view(q.size(0), group)
                mask = mask | (own[:, :, None] == keys[None, None, :]).any(1)
            loss = self.distill(scores, teacher, mask)
        else:
            loss = self.distill(group_scores(self.loss, q, p, group), teacher)
        if self.infonce_weight:
            loss = loss + self.infonce_weight * self.loss(q, p, extras.get("positive_keys"), extras.get("passage_keys"))
        return loss

    def after_step(self, reps: dict[str, torch.Tensor], extras: dict[str, torch.Tensor]) -> None:
        pass


def group_scores(infonce: nn.Module, q: torch.Tensor, p: torch.Tensor, group: int) -> torch.Tensor:
    """[Q, G]: ``infonce``'s scaled similarity of query i with passages i*G .. i*G+G-1 (its own group)."""
    if infonce.similarity == "cos":
        q, p = nn.functional.normalize(q, dim=-1), nn.functional.normalize(p, dim=-1)
    scale = infonce.log_scale.exp().clamp(max=100.0)
    return torch.einsum("qd,qgd->qg", q, p.view(q.size(0), group, -1)) * scale


class DistillRerankTask(nn.Module):
    """Cross-encoder distillation over the pairs' logits [Q * G] + ``listwise_weight`` x listwise softmax."""

    def __init__(self, distill: nn.Module, listwise: nn.Module | None = None, listwise_weight: float = 0.0):
        super().__init__()
        self.distill, self.listwise, self.listwise_weight = distill, listwise, listwise_weight

    def towers(self, batch: dict[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
        return {"pairs": batch["pairs"]}

    def extras(self, batch: dict[str, Any], model: nn.Module, device: torch.device) -> dict[str, torch.Tensor]:
        return {"teacher_scores": batch["teacher_scores"].to(device)}

    def compute_loss(self, reps: dict[str, torch.Tensor], extras: dict[str, torch.Tensor]) -> torch.Tensor:
        teacher = extras["teacher_scores"]
        student = reps["pairs"].float().reshape(teacher.shape)
        loss = self.distill(student, teacher)
        if self.listwise_weight and self.listwise is not None:
            loss = loss + self.listwise_weight * self.listwise(student.reshape(-1))
        return loss

    def after_step(self, reps: dict[str, torch.Tensor], extras: dict[str, torch.Tensor]) -> None:
        pass

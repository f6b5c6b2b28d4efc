"""Reranker losses. Listwise softmax loss: each query's group is 1 positive followed by n negatives; cross-entropy
over the group's scores with the positive as target (as in Tevatron's reranker and monoBERT-style training).

``negative_mask`` [Q, G] (True = not a negative) drops a "negative" that is in fact a judged positive of the
query (its docid is among the query's known positives, e.g. a mined or Tevatron negative that the qrels judge
relevant): it leaves the softmax instead of being pushed down. The positive (column 0) is never masked.
``PointwiseBCELoss`` (``--ce-loss bce``) takes the same groups and mask, one binary label per pair.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class ListwiseSoftmaxLoss(nn.Module):
    def __init__(self, group_size: int, temperature: float = 1.0):
        super().__init__()
        if group_size < 2:
            raise ValueError("a listwise group needs a positive and at least one negative")
        self.group_size, self.temperature = group_size, temperature

    def forward(self, scores: torch.Tensor, negative_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``scores`` [Q * G] (or [Q, G]) grouped per query, positive first; mean loss over the Q groups."""
        scores = scores.float().reshape(-1, self.group_size) / self.temperature
        if negative_mask is not None:
            mask = negative_mask.reshape(scores.shape).bool().clone()
            mask[:, 0] = False
            scores = scores.masked_fill(mask, float("-inf"))
        return F.cross_entropy(scores, torch.zeros(scores.size(0), dtype=torch.long, device=scores.device))


class PointwiseBCELoss(nn.Module):
    """Pointwise binary cross-entropy for rerankers (monoBERT, Nogueira & Cho 2019): each (query, passage) score
    is a logit, the positive (column 0 of each group) labelled 1 and the negatives 0; mean over the scored pairs.

    ``scores`` [Q * G] (or [Q, G]) as ``ListwiseSoftmaxLoss``; ``negative_mask`` [Q, G] (True = a "negative" that
    is a judged positive of the query) drops those pairs from the mean rather than labelling them 0. At a score of
    0 for every pair the loss is ln 2 (chance)."""

    def __init__(self, group_size: int):
        super().__init__()
        if group_size < 2:
            raise ValueError("a reranker group needs a positive and at least one negative")
        self.group_size = group_size

    def forward(self, scores: torch.Tensor, negative_mask: torch.Tensor | None = None) -> torch.Tensor:
        scores = scores.float().reshape(-1, self.group_size)
        labels = torch.zeros_like(scores)
        labels[:, 0] = 1.0
        keep = torch.ones_like(scores, dtype=torch.bool)
        if negative_mask is not None:
            keep = ~negative_mask.reshape(scores.shape).bool()
            keep[:, 0] = True
        losses = F.binary_cross_entropy_with_logits(scores, labels, reduction="none")
        return losses[keep].mean()

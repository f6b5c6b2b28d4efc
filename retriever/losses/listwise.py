"""Listwise softmax loss for rerankers: each query's group is 1 positive followed by n negatives; cross-entropy
over the group's scores with the positive as target (as in Tevatron's reranker and monoBERT-style training).

``negative_mask`` [Q, G] (True = not a negative) drops a "negative" that is in fact a judged positive of the
query (its docid is among the query's known positives, e.g. a mined or Tevatron negative that the qrels judge
relevant): it leaves the softmax instead of being pushed down. The positive (column 0) is never masked.
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

"""Listwise softmax loss for rerankers: each query's group is 1 positive followed by n negatives; cross-entropy
over the group's scores with the positive as target (as in Tevatron's reranker and monoBERT-style training)."""
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

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.float().reshape(-1, self.group_size) / self.temperature
        return F.cross_entropy(scores, torch.zeros(scores.size(0), dtype=torch.long, device=scores.device))

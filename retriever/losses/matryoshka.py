"""Matryoshka representation learning: one contrastive loss summed over nested prefixes of the embeddings.

Kusupati et al. 2022, "Matryoshka Representation Learning" (NeurIPS; arXiv:2205.13147): training the loss on
the first ``d`` components for several ``d`` makes every prefix a usable embedding of its own, so an index can
keep 64 or 128 of 384 dimensions (``retr index --dim``) at a small loss of quality. The reference
implementation retr follows for text retrieval is sentence-transformers' ``MatryoshkaLoss``
(``sentence_transformers/losses/MatryoshkaLoss.py``): the wrapped loss is computed on each truncated prefix and
the results are added with per-dimension weights (default 1).

A prefix of an L2-normalised vector is shorter than 1, so with ``renormalize`` (set it when the encoder
normalises) each prefix is normalised again before the wrapped loss sees it, which is exactly what the encoder
does at search time with ``truncate_dim`` set (truncate, then normalise).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F


class MatryoshkaLoss(nn.Module):
    """``sum_d w_d * inner(prefix_d(q), prefix_d(p), *rest)`` over ``dims``.

    ``inner``: a loss taking (queries [Q, D], passages [P, D], *extras), e.g. ``InfoNCELoss``; its parameters (a
    learnable temperature) are shared by every prefix. ``dims``: distinct prefix lengths, each >= 1 (checked
    against D at the first call: ``ValueError`` when one is longer than the embeddings). ``weights``: one per
    dim (default all 1). Returns a scalar tensor.
    """

    def __init__(self, inner: nn.Module, dims: Sequence[int], weights: Sequence[float] | None = None,
                 renormalize: bool = True):
        super().__init__()
        dims = [int(d) for d in dims]
        if not dims:
            raise ValueError("--matryoshka-dims needs at least one dimension")
        if any(d < 1 for d in dims):
            raise ValueError(f"--matryoshka-dims must be positive, got {dims}")
        if len(set(dims)) != len(dims):
            raise ValueError(f"--matryoshka-dims has a repeated dimension: {dims}")
        if weights is not None and len(weights) != len(dims):
            raise ValueError(f"{len(weights)} Matryoshka weights for {len(dims)} dimensions")
        self.inner = inner
        self.dims = dims
        self.weights = [1.0] * len(dims) if weights is None else [float(w) for w in weights]
        self.renormalize = renormalize

    def prefix(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """The first ``dim`` components of each row [n, dim], re-normalised when ``renormalize``."""
        x = x[:, :dim]
        return F.normalize(x, p=2, dim=-1) if self.renormalize else x

    def forward(self, q: torch.Tensor, p: torch.Tensor, *extras: torch.Tensor | None) -> torch.Tensor:
        longest = max(self.dims)
        if longest > q.size(-1):
            raise ValueError(f"Matryoshka dimension {longest} is more than the embeddings' {q.size(-1)}")
        total = q.new_zeros((), dtype=torch.float32)
        for dim, weight in zip(self.dims, self.weights):
            total = total + weight * self.inner(self.prefix(q, dim), self.prefix(p, dim), *extras)
        return total

"""InfoNCE over in-batch negatives plus any number of hard negatives per query (DPR / Tevatron / Contriever).

Passages come grouped per query: ``p[i*G]`` is query i's positive and ``p[i*G+1 : (i+1)*G]`` its hard
negatives (G = 1 + negatives per query); every other passage in the batch is a negative too. Scores are
``sim(q, p) / temperature`` with ``sim`` the dot product or the cosine. ``symmetric`` adds the
passage-to-query direction over the positives (as in CLIP / E5 pre-training).

Known false negatives can be masked: ``passage_keys`` [P] (an integer id per passage, e.g. a hash of its docid)
and ``positive_keys`` [Q, K] (the ids of every judged positive of each query, padded with -1) remove from a
query's negatives any in-batch passage judged relevant to it. On NFCorpus (~43 judged documents per query,
shared across related queries) random in-batch "negatives" are often judged positives of the query, and B3
clusters put related queries together on purpose; without the mask the loss pushes them away. The mask applies in both directions: with ``symmetric``,
a query that has passage i among its judged positives is no negative of passage i either.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class InfoNCELoss(nn.Module):
    def __init__(self, temperature: float = 0.05, learnable_temperature: bool = False, symmetric: bool = False,
                 similarity: str = "dot"):
        super().__init__()
        if similarity not in ("dot", "cos"):
            raise ValueError(f"similarity must be 'dot' or 'cos', got {similarity!r}")
        if temperature <= 0:
            raise ValueError("temperature must be > 0")
        log_scale = torch.tensor(math.log(1.0 / temperature))
        if learnable_temperature:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale, persistent=False)
        self.symmetric = symmetric
        self.similarity = similarity

    @property
    def temperature(self) -> float:
        return float(torch.exp(-self.log_scale.detach()))

    def scores(self, q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        if self.similarity == "cos":
            q, p = F.normalize(q, dim=-1), F.normalize(p, dim=-1)
        return q @ p.T * self.log_scale.exp().clamp(max=100.0)

    def forward(self, q: torch.Tensor, p: torch.Tensor, positive_keys: torch.Tensor | None = None,
                passage_keys: torch.Tensor | None = None) -> torch.Tensor:
        """``q`` [Q, d], ``p`` [Q * G, d] grouped per query; optional ``positive_keys`` [Q, K] (-1 = padding) and
        ``passage_keys`` [Q * G]. Returns the mean loss (of both directions when ``symmetric``)."""
        if p.size(0) % q.size(0):
            raise ValueError(f"{p.size(0)} passages is not a multiple of {q.size(0)} queries")
        group = p.size(0) // q.size(0)
        scores = self.scores(q.float(), p.float())
        target = torch.arange(q.size(0), device=q.device) * group
        mask = None
        if positive_keys is not None and passage_keys is not None:
            mask = known_positive_mask(positive_keys, passage_keys, target)
            scores = scores.masked_fill(mask, float("-inf"))
        loss = F.cross_entropy(scores, target)
        if self.symmetric:
            # passage -> query over the positives: query j is no negative for passage i if i is a known positive of j
            pos = p[::group]
            back = self.scores(pos.float(), q.float())
            if mask is not None:
                back = back.masked_fill(mask[:, ::group].T, float("-inf"))
            loss = (loss + F.cross_entropy(back, torch.arange(q.size(0), device=q.device))) / 2
        return loss


def known_positive_mask(positive_keys: torch.Tensor, passage_keys: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[Q, P] bool, True where passage p is a judged positive of query q other than q's own target passage."""
    known = (positive_keys[:, :, None] == passage_keys[None, None, :]) & (positive_keys[:, :, None] >= 0)
    mask = known.any(1)
    mask[torch.arange(positive_keys.size(0), device=mask.device), target] = False
    return mask

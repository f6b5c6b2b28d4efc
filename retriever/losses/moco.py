"""MoCo loss (He et al. 2020; Contriever's unsupervised recipe): queries from the online encoder, keys from a
momentum-updated copy (no gradient), negatives from a FIFO queue of past keys (and, by default, the other
keys of the batch). The queue is a buffer, so it is saved and restored with checkpoints.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class MoCoLoss(nn.Module):
    def __init__(self, dim: int, queue_size: int = 131072, temperature: float = 0.05, similarity: str = "dot",
                 in_batch_negatives: bool = True):
        super().__init__()
        if similarity not in ("dot", "cos"):
            raise ValueError(f"similarity must be 'dot' or 'cos', got {similarity!r}")
        self.temperature = temperature
        self.similarity = similarity
        self.in_batch_negatives = in_batch_negatives
        self.register_buffer("queue", torch.zeros(queue_size, dim))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue_len", torch.zeros((), dtype=torch.long))

    def _sim(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.similarity == "cos":
            a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
        return a @ b.T

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """``q`` [B, d] with grad; ``k`` [B, d] keys of the same examples (detached here)."""
        q, k = q.float(), k.detach().float()
        queue = self.queue[: int(self.queue_len)].float()
        if self.in_batch_negatives:
            logits = torch.cat([self._sim(q, k), self._sim(q, queue)], dim=1)
            target = torch.arange(q.size(0), device=q.device)
        else:
            pos = self._sim(q, k).diagonal().unsqueeze(1)
            logits = torch.cat([pos, self._sim(q, queue)], dim=1)
            target = torch.zeros(q.size(0), dtype=torch.long, device=q.device)
        return F.cross_entropy(logits / self.temperature, target)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write keys over the oldest entries (FIFO ring buffer)."""
        keys = keys.detach().to(self.queue.dtype)
        size = self.queue.size(0)
        if keys.size(0) >= size:
            keys = keys[-size:]
        ptr = int(self.queue_ptr)
        n = keys.size(0)
        first = min(n, size - ptr)
        self.queue[ptr:ptr + first] = keys[:first]
        if n > first:
            self.queue[: n - first] = keys[first:]
        self.queue_ptr.fill_((ptr + n) % size)
        self.queue_len.fill_(min(size, int(self.queue_len) + n))

    def queue_in_order(self) -> torch.Tensor:
        """Queue entries oldest first (for tests and inspection)."""
        n, ptr = int(self.queue_len), int(self.queue_ptr)
        if n < self.queue.size(0):
            return self.queue[:n]
        return torch.cat([self.queue[ptr:], self.queue[:ptr]])

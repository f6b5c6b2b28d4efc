"""MoCo loss (He et al. 2020; Contriever's unsupervised recipe): queries from the online encoder, keys from a
momentum-updated copy (no gradient), negatives from a FIFO queue of past keys (and, by default, the other
keys of the batch). The queue is a buffer, so it is saved and restored with checkpoints.

The queue starts empty (``queue_init="empty"``, retr's: the first steps see only the keys queued so far) or
full of random unit vectors (``"random"``, Contriever's ``src/moco.py``: every step sees ``queue_size``
negatives, the random ones pushed out by real keys first in, first out).

Memory: the logits are [B, B + queue] (270 MB per copy at B = 512 and a 131072-key queue, and the loss keeps
several copies for backward). ``row_chunk`` computes the loss over ``row_chunk`` queries at a time under
activation checkpointing, so only one chunk's logits are alive (forward and backward) and the loss's memory
no longer grows with the batch; values and gradients are those of the unchunked loss (up to float summation
order). The trainer sets it to the GradCache query chunk.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

QUEUE_INITS = ("random", "empty")


class MoCoLoss(nn.Module):
    def __init__(self, dim: int, queue_size: int = 131072, temperature: float = 0.05, similarity: str = "dot",
                 in_batch_negatives: bool = True, row_chunk: int | None = None, queue_init: str = "empty",
                 seed: int = 0):
        super().__init__()
        if queue_init not in QUEUE_INITS:
            raise ValueError(f"queue_init must be one of {', '.join(QUEUE_INITS)}, got {queue_init!r}")
        if row_chunk is not None and row_chunk < 1:
            raise ValueError(f"row_chunk must be >= 1, got {row_chunk}")
        self.row_chunk = row_chunk
        if similarity not in ("dot", "cos"):
            raise ValueError(f"similarity must be 'dot' or 'cos', got {similarity!r}")
        self.temperature = temperature
        self.similarity = similarity
        self.in_batch_negatives = in_batch_negatives
        self.register_buffer("queue", torch.zeros(queue_size, dim))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue_len", torch.zeros((), dtype=torch.long))
        if queue_init == "random":  # Contriever (src/moco.py): a full queue of random unit vectors from step 1
            g = torch.Generator().manual_seed(seed)  # not the global RNG: identical on every DDP rank
            self.queue.copy_(F.normalize(torch.randn(queue_size, dim, generator=g), dim=-1))
            self.queue_len.fill_(queue_size)

    def _sim(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.similarity == "cos":
            a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
        return a @ b.T

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """``q`` [B, d] with grad; ``k`` [B, d] keys of the same examples (detached here). Mean loss over B."""
        q, k = q.float(), k.detach().float()
        queue = self.queue[: int(self.queue_len)].float()
        n = q.size(0)
        if not self.row_chunk or self.row_chunk >= n:
            return self._loss_sum(q, k, queue, 0) / n
        total = q.new_zeros(())
        for s in range(0, n, self.row_chunk):
            total = total + checkpoint(self._loss_sum, q[s:s + self.row_chunk], k, queue, s, use_reentrant=False)
        return total / n

    def _loss_sum(self, q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, offset: int) -> torch.Tensor:
        """Summed loss of queries ``q`` = rows ``offset .. offset + len(q)`` of the batch."""
        rows = torch.arange(offset, offset + q.size(0), device=q.device)
        if self.in_batch_negatives:
            logits = torch.cat([self._sim(q, k), self._sim(q, queue)], dim=1)
            target = rows
        else:
            pos = self._sim(q, k[rows]).diagonal().unsqueeze(1)
            logits = torch.cat([pos, self._sim(q, queue)], dim=1)
            target = torch.zeros(q.size(0), dtype=torch.long, device=q.device)
        return F.cross_entropy(logits / self.temperature, target, reduction="sum")

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

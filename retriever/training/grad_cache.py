"""Gradient caching (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup").

A contrastive loss couples every example in the batch, so gradient accumulation does not enlarge it. GradCache
splits the step in two: (1) encode the whole batch chunk by chunk *without* a graph, keeping only the
representations; (2) compute the loss on them and its gradient with respect to each representation;
(3) encode each chunk again *with* a graph and backpropagate the cached representation gradients through it.
Memory is that of one chunk plus the [batch, dim] representations; the parameter gradients equal those of
the full-batch step, provided the second forward of each chunk sees the same dropout masks as the first.

Why retr has its own (~100 lines): the PyPI ``gradcache`` 0.0.1 package cannot be imported as documented
(``from gradcache import GradCache`` fails on a missing ``grad_cache.context_managers``), its functional
``cat_input_tensor`` drops keyword arguments, and its functional path snapshots only the CPU RNG, so dropout
is not replayed on GPU (silently wrong gradients). ``RandContext`` here snapshots the CPU RNG *and* the RNG
of the device the chunk runs on.

Under DDP pass ``sync_context(last)``: every chunk's backward but the last runs under ``no_sync``, so there is
one gradient all-reduce per step.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, ContextManager, Mapping

import torch


class RandContext:
    """Captures the CPU RNG and the chunk device's RNG now; ``with ctx:`` replays them, then restores the
    RNG state that was current before the ``with`` (so the replay does not disturb later randomness)."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.cpu_state = torch.get_rng_state()
        self.device_state = None
        if self.device.type == "cuda":
            self.device_state = torch.cuda.get_rng_state(self.device)
        self._fork: contextlib.AbstractContextManager | None = None

    def __enter__(self) -> None:
        devices = [self.device] if self.device.type == "cuda" else []
        self._fork = torch.random.fork_rng(devices=devices, enabled=True)
        self._fork.__enter__()
        torch.set_rng_state(self.cpu_state)
        if self.device_state is not None:
            torch.cuda.set_rng_state(self.device_state, self.device)

    def __exit__(self, *exc) -> None:
        assert self._fork is not None
        self._fork.__exit__(*exc)
        self._fork = None


def split_inputs(inputs: Mapping[str, torch.Tensor], chunk: int) -> list[dict[str, torch.Tensor]]:
    """Split a tokenized batch along the batch dim; each chunk drops its all-padding columns at either end
    (trailing ones under right padding, leading ones under left padding)."""
    n = next(iter(inputs.values())).size(0)
    chunks = []
    for s in range(0, n, chunk):
        part = {k: v[s:s + chunk] for k, v in inputs.items()}
        mask = part.get("attention_mask")
        if mask is not None and mask.dim() == 2 and mask.size(1):
            used = mask.bool().any(0).nonzero().flatten()
            lo, hi = (int(used[0]), int(used[-1]) + 1) if used.numel() else (0, mask.size(1))
            width = mask.size(1)
            part = {k: (v[:, lo:hi] if v.dim() == 2 and v.size(1) == width else v) for k, v in part.items()}
        chunks.append(part)
    return chunks


@dataclass
class _Chunk:
    tower: str
    inputs: dict[str, torch.Tensor]
    rng: RandContext | None
    start: int
    end: int


def cached_step(
    forward: Callable[[str, dict[str, torch.Tensor], bool], torch.Tensor],
    towers: Mapping[str, tuple[Mapping[str, torch.Tensor], int]],
    loss_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    device: torch.device,
    backward: Callable[[torch.Tensor], None] = lambda t: t.backward(),
    sync_context: Callable[[bool], ContextManager] = lambda last: contextlib.nullcontext(),
    replay_rng: bool = True,
) -> torch.Tensor:
    """One GradCache step. ``towers`` maps a tower name to (tokenized inputs, chunk size);
    ``forward(name, chunk_inputs, grad)`` returns that tower's representations; ``loss_fn`` takes
    {name: [n, d] representations}. Parameter gradients are accumulated into ``.grad``; returns the loss."""
    chunks: list[_Chunk] = []
    reps: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, (inputs, size) in towers.items():
            parts, pos = [], 0
            for part in split_inputs(inputs, size):
                rng = RandContext(device) if replay_rng else None
                r = forward(name, part, False)
                chunks.append(_Chunk(name, part, rng, pos, pos + r.size(0)))
                pos += r.size(0)
                parts.append(r)
            reps[name] = torch.cat(parts).detach().requires_grad_(True)
    loss = loss_fn(reps)
    backward(loss)  # fills reps[name].grad (scaled, if ``backward`` scales)
    grads = {name: r.grad for name, r in reps.items()}
    for i, c in enumerate(chunks):
        g = grads[c.tower]
        if g is None:
            continue
        with sync_context(i == len(chunks) - 1):
            with c.rng if c.rng is not None else contextlib.nullcontext():
                r = forward(c.tower, c.inputs, True)
            surrogate = torch.dot(r.flatten().float(), g[c.start:c.end].flatten().float())
            surrogate.backward()
    return loss.detach()

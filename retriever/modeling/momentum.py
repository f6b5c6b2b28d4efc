"""A momentum (EMA) copy of an encoder, the key encoder of MoCo: theta_k <- m * theta_k + (1 - m) * theta_q."""
from __future__ import annotations

import copy

import torch
from torch import nn


class MomentumEncoder(nn.Module):
    def __init__(self, online: nn.Module, momentum: float = 0.9995):
        super().__init__()
        if not 0 <= momentum <= 1:
            raise ValueError("momentum must be in [0, 1]")
        self.momentum = momentum
        self.encoder = copy.deepcopy(online)
        for p in self.encoder.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, online: nn.Module) -> None:
        m = self.momentum
        for pk, pq in zip(self.encoder.parameters(), online.parameters()):
            pk.mul_(m).add_(pq.detach(), alpha=1 - m)

    @torch.no_grad()
    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.encoder(*args, **kwargs)

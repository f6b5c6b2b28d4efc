"""Losses, one ``nn.Module`` per job: InfoNCE with hard negatives, MoCo with a key queue, listwise for rerankers."""
from .infonce import InfoNCELoss
from .moco import MoCoLoss

__all__ = ["InfoNCELoss", "MoCoLoss"]

"""Losses, one ``nn.Module`` per job: InfoNCE with hard negatives, Matryoshka prefixes of any of them, MoCo with a key queue, listwise for rerankers."""
from .infonce import InfoNCELoss
from .matryoshka import MatryoshkaLoss
from .moco import MoCoLoss

__all__ = ["InfoNCELoss", "MatryoshkaLoss", "MoCoLoss"]

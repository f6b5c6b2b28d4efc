"""What one contrastive step computes, separated from how the trainer steps (plain or GradCache, one process
or DDP). A task names the towers to encode (with grad), computes extra tensors without grad (MoCo keys), and
turns gathered representations into a loss."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..losses.infonce import InfoNCELoss
from ..losses.moco import MoCoLoss
from ..modeling.dual_encoder import DualEncoder
from ..modeling.momentum import MomentumEncoder


class InBatchTask(nn.Module):
    """Supervised (query, positive, hard negatives) or unsupervised crop pairs with in-batch negatives."""

    def __init__(self, loss: InfoNCELoss):
        super().__init__()
        self.loss = loss

    def towers(self, batch: dict[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
        return {"queries": batch["queries"], "passages": batch["passages"]}

    def extras(self, batch: dict[str, Any], model: DualEncoder, device: torch.device) -> dict[str, torch.Tensor]:
        keys = ("positive_keys", "passage_keys")
        return {k: batch[k].to(device) for k in keys if k in batch}

    def compute_loss(self, reps: dict[str, torch.Tensor], extras: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.loss(reps["queries"], reps["passages"], extras.get("positive_keys"), extras.get("passage_keys"))

    def after_step(self, reps: dict[str, torch.Tensor], extras: dict[str, torch.Tensor]) -> None:
        pass


class MoCoTask(nn.Module):
    """Contriever's MoCo: crop A through the online encoder, crop B through the momentum key encoder; the
    key encoder is updated before keys are computed and the (gathered) keys are queued after the step."""

    def __init__(self, loss: MoCoLoss, model: DualEncoder, momentum: float = 0.9995):
        super().__init__()
        if not model.shared:
            raise ValueError("MoCo training needs shared towers (one encoder and its momentum copy)")
        self.loss = loss
        self.key_encoder = MomentumEncoder(model.query_encoder, momentum)

    def towers(self, batch: dict[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
        return {"queries": batch["queries"]}

    def extras(self, batch: dict[str, Any], model: DualEncoder, device: torch.device) -> dict[str, torch.Tensor]:
        self.key_encoder.update(model.query_encoder)
        keys = self.key_encoder(**{k: v.to(device) for k, v in batch["passages"].items()})
        return {"keys": keys.detach()}

    def compute_loss(self, reps: dict[str, torch.Tensor], extras: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.loss(reps["queries"], extras["keys"])

    def after_step(self, reps: dict[str, torch.Tensor], extras: dict[str, torch.Tensor]) -> None:
        self.loss.enqueue(extras["keys"])


class RerankTask(nn.Module):
    """Cross-encoder training: scores of (query, passage) pairs in groups of 1 positive + n negatives,
    listwise softmax loss. One "tower" (the pairs), so GradCache chunks pairs like passages."""

    def __init__(self, loss: nn.Module):
        super().__init__()
        self.loss = loss

    def towers(self, batch: dict[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
        return {"pairs": batch["pairs"]}

    def extras(self, batch: dict[str, Any], model: nn.Module, device: torch.device) -> dict[str, torch.Tensor]:
        return {"negative_mask": batch["negative_mask"].to(device)} if "negative_mask" in batch else {}

    def compute_loss(self, reps: dict[str, torch.Tensor], extras: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.loss(reps["pairs"], extras.get("negative_mask"))

    def after_step(self, reps: dict[str, torch.Tensor], extras: dict[str, torch.Tensor]) -> None:
        pass

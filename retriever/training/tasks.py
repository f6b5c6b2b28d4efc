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
from .grad_cache import split_inputs


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
    key encoder is updated before keys are computed and the (gathered) keys are queued after the step.

    ``key_chunk``: encode the keys ``key_chunk`` crops at a time (the trainer sets it to the GradCache passage
    chunk), so the no-grad key forward holds one chunk's activations, not the whole batch's: with GradCache the
    memory of a step then stays that of one chunk plus [batch, dim] representations. ``None``: one forward.
    """

    def __init__(self, loss: MoCoLoss, model: DualEncoder, momentum: float = 0.9995, key_chunk: int | None = None):
        super().__init__()
        if not model.shared:
            raise ValueError("MoCo training needs shared towers (one encoder and its momentum copy)")
        if key_chunk is not None and key_chunk < 1:
            raise ValueError(f"key_chunk must be >= 1, got {key_chunk}")
        self.loss = loss
        self.key_encoder = MomentumEncoder(model.query_encoder, momentum)
        self.key_chunk = key_chunk

    def towers(self, batch: dict[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
        return {"queries": batch["queries"]}

    def extras(self, batch: dict[str, Any], model: DualEncoder, device: torch.device) -> dict[str, torch.Tensor]:
        self.key_encoder.update(model.query_encoder)
        return {"keys": self.encode_keys(batch["passages"], device)}

    @torch.no_grad()
    def encode_keys(self, inputs: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
        """[B, d] keys of tokenized crops, ``key_chunk`` rows per forward (each chunk trimmed of its all-padding
        columns, as GradCache's chunks are)."""
        n = next(iter(inputs.values())).size(0)
        parts = split_inputs(inputs, self.key_chunk or n)
        return torch.cat([self.key_encoder(**{k: v.to(device) for k, v in part.items()}) for part in parts]).detach()

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

"""Distillation losses: a student (dual encoder or cross-encoder) learns a teacher's scores of each query's
candidate group [positive, negative_1 .. negative_n] (scores from ``retr score``).

- ``MarginMSELoss`` (Hofstätter et al. 2020, "Improving Efficient Neural Ranking Models with Cross-Architecture
  Knowledge Distillation"): mean squared error between the student's and the teacher's margins
  ``s(q, p+) - s(q, p-)``, over every negative of the group (sentence-transformers' ``MarginMSELoss``; with
  several negatives, as its multi-negative form, the mean over negatives).
- ``KLDistillLoss`` (listwise distillation, RocketQAv2 (Ren et al. 2021) / Tevatron's distillation):
  KL(softmax(teacher / T_t) || softmax(student)) over the group.

Both take ``student`` and ``teacher`` scores shaped [Q, G] (G = 1 + negatives, positive first) and return the
mean over queries. Student scores are the ones the trainer already uses (a dual encoder's
``similarity / temperature``, a cross-encoder's logit); teacher scores are raw (a cross-encoder's logit, BM25, a
dot product) divided by ``teacher_temperature``, which puts them on the student's scale (e.g. a dense teacher's
cosines with the student's 0.05; a cross-encoder's logits as they are, 1.0). Memory: O(Q x G).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class _TeacherScaled(nn.Module):
    """A distillation loss whose teacher scores are divided by ``teacher_temperature`` (> 0)."""

    def __init__(self, teacher_temperature: float = 1.0):
        super().__init__()
        if teacher_temperature <= 0:
            raise ValueError("teacher temperature must be > 0")
        self.teacher_temperature = teacher_temperature


class MarginMSELoss(_TeacherScaled):

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """``student``, ``teacher`` [Q, G], column 0 the positive; mean over Q x (G - 1) margins."""
        student, teacher = _check(student, teacher)
        teacher = teacher / self.teacher_temperature
        s_margin = student[:, :1] - student[:, 1:]
        t_margin = teacher[:, :1] - teacher[:, 1:]
        return F.mse_loss(s_margin, t_margin)


class KLDistillLoss(_TeacherScaled):

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """``student``, ``teacher`` [Q, G]; mean over Q of KL(teacher || student) over the group."""
        student, teacher = _check(student, teacher)
        target = F.log_softmax(teacher / self.teacher_temperature, dim=-1)
        return F.kl_div(F.log_softmax(student, dim=-1), target, log_target=True, reduction="batchmean")


def _check(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if student.shape != teacher.shape or student.dim() != 2 or student.size(1) < 2:
        raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} scores must both be "
                         "[queries, 1 + negatives] with at least one negative")
    return student.float(), teacher.float().to(student.device)


def distill_loss(name: str, teacher_temperature: float = 1.0) -> nn.Module:
    """``margin-mse`` | ``kl`` -> the loss module (``ValueError`` otherwise)."""
    if name == "margin-mse":
        return MarginMSELoss(teacher_temperature)
    if name == "kl":
        return KLDistillLoss(teacher_temperature)
    raise ValueError(f"distillation loss must be margin-mse or kl, got {name!r}")

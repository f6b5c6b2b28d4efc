"""Distillation losses: a student (dual encoder or cross-encoder) learns a teacher's scores of each query's
candidate group [positive, negative_1 .. negative_n] (scores from ``retr score``).

- ``MarginMSELoss`` (Hofstätter et al. 2020, "Improving Efficient Neural Ranking Models with Cross-Architecture
  Knowledge Distillation"): mean squared error between the student's and the teacher's margins
  ``s(q, p+) - s(q, p-)``, over every negative of the group (sentence-transformers' ``MarginMSELoss``; with
  several negatives, as its multi-negative form, the mean over negatives).
- ``KLDistillLoss`` (listwise distillation, RocketQAv2 (Ren et al. 2021) / Tevatron's distillation):
  KL(softmax(teacher / T_t) || softmax(student)) over the group.
- ``SoftInfoNCELoss`` (``soft-infonce``, dual encoders): InfoNCE whose one-hot label is replaced by the
  teacher's distribution over the query's group, every other in-batch passage staying in the softmax as a
  zero-probability candidate: cross-entropy(softmax(teacher / T_t) placed on the group's columns,
  softmax(student over the whole batch)). With a certain teacher it *is* InfoNCE; ``kl`` instead drops the
  in-batch negatives, which on SciFact cost 0.03 nDCG@10 (RESULTS §15, fourth design): the student learns the
  teacher's order among near misses but loses the broad separation the in-batch negatives give. The soft
  target over in-batch negatives is the form of in-batch distillation in e.g. RocketQAv2's listwise loss and
  Tevatron's; this module places the teacher's mass on the group only, since the offline teacher scored no
  other pair.

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


class SoftInfoNCELoss(_TeacherScaled):

    def forward(self, scores: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``scores`` [Q, Q * G]: the student's scaled similarity of every query with every passage of the
        batch, grouped per query (passages i*G .. i*G+G-1 are query i's group, positive first); ``teacher``
        [Q, G]; ``mask`` [Q, Q * G] (True = leave out: an in-batch passage judged relevant to the query; never
        inside the query's own group). Mean over Q of the cross-entropy to the teacher's distribution."""
        n_q, group = teacher.shape
        if scores.dim() != 2 or scores.shape != (n_q, n_q * group) or group < 2:
            raise ValueError(f"scores {tuple(scores.shape)} must be [Q, Q * G] for teacher {tuple(teacher.shape)}")
        own = torch.zeros_like(scores, dtype=torch.bool)
        rows = torch.arange(n_q, device=scores.device)
        cols = rows[:, None] * group + torch.arange(group, device=scores.device)[None, :]
        own[rows[:, None], cols] = True
        scores = scores.float()
        if mask is not None:
            scores = scores.masked_fill(mask.to(scores.device) & ~own, float("-inf"))
        log_p = F.log_softmax(scores, dim=-1).gather(1, cols)  # [Q, G]: the student's log-probs on the group
        target = F.softmax(teacher.float().to(scores.device) / self.teacher_temperature, dim=-1)
        return -(target * log_p).sum(1).mean()


def _check(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if student.shape != teacher.shape or student.dim() != 2 or student.size(1) < 2:
        raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} scores must both be "
                         "[queries, 1 + negatives] with at least one negative")
    return student.float(), teacher.float().to(student.device)


def distill_loss(name: str, teacher_temperature: float = 1.0) -> nn.Module:
    """``margin-mse`` | ``kl`` | ``soft-infonce`` -> the loss module (``ValueError`` otherwise)."""
    if name == "margin-mse":
        return MarginMSELoss(teacher_temperature)
    if name == "kl":
        return KLDistillLoss(teacher_temperature)
    if name == "soft-infonce":
        return SoftInfoNCELoss(teacher_temperature)
    raise ValueError(f"distillation loss must be margin-mse, kl or soft-infonce, got {name!r}")

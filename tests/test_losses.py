"""InfoNCE against a hand computation; MoCo queue FIFO and gradient-free keys; exact momentum update."""
from __future__ import annotations

import math

import pytest
import torch

from retr.retriever.losses import InfoNCELoss, MoCoLoss
from retr.retriever.modeling.momentum import MomentumEncoder


def test_infonce_hand_computed_with_hard_negatives():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # group size 2: q0 -> (p0 positive, p1 hard negative), q1 -> (p2 positive, p3 hard negative)
    p = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [1.0, 1.0]])
    t = 0.5
    loss = InfoNCELoss(temperature=t)(q, p)
    s0 = [1.0, 0.5, 0.0, 1.0]
    s1 = [0.0, 0.5, 1.0, 1.0]
    l0 = -(s0[0] / t) + math.log(sum(math.exp(x / t) for x in s0))
    l1 = -(s1[2] / t) + math.log(sum(math.exp(x / t) for x in s1))
    assert loss.item() == pytest.approx((l0 + l1) / 2, rel=1e-6)


def test_infonce_symmetric_and_cosine():
    q = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    p = torch.tensor([[4.0, 0.0], [0.0, 1.0]])
    cos = InfoNCELoss(temperature=1.0, similarity="cos")(q, p)
    expected = -1 + math.log(math.e + 1)  # cos sims: diag 1, off-diag 0
    assert cos.item() == pytest.approx(expected, rel=1e-6)
    sym = InfoNCELoss(temperature=1.0, similarity="cos", symmetric=True)(q, p)
    assert sym.item() == pytest.approx(expected, rel=1e-6)  # symmetric case: both directions equal


def test_learnable_temperature_gets_gradient():
    loss_fn = InfoNCELoss(temperature=0.05, learnable_temperature=True)
    q, p = torch.randn(4, 8), torch.randn(4, 8)
    loss_fn(q, p).backward()
    assert loss_fn.log_scale.grad is not None and loss_fn.temperature == pytest.approx(0.05)


def test_moco_queue_is_fifo():
    loss = MoCoLoss(dim=2, queue_size=5)
    for i in range(4):  # 8 keys through a queue of 5: the oldest three are gone
        loss.enqueue(torch.tensor([[float(2 * i), 0.0], [float(2 * i + 1), 0.0]]))
    assert loss.queue_in_order()[:, 0].tolist() == [3.0, 4.0, 5.0, 6.0, 7.0]
    assert int(loss.queue_len) == 5


def test_moco_keys_carry_no_gradient_and_queue_negatives_count():
    torch.manual_seed(0)
    loss = MoCoLoss(dim=4, queue_size=8, temperature=0.1)
    q = torch.randn(3, 4, requires_grad=True)
    k = torch.randn(3, 4, requires_grad=True)
    before = loss(q, k)
    before.backward()
    assert q.grad is not None and k.grad is None
    loss.enqueue(-q.detach() * 5)  # strong negatives in the queue make the loss larger
    assert loss(q, k).item() > before.item()


def test_momentum_update_is_exact():
    torch.manual_seed(0)
    online = torch.nn.Linear(3, 2)
    key = MomentumEncoder(online, momentum=0.9)
    k0 = [p.detach().clone() for p in key.encoder.parameters()]
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
    key.update(online)
    for k_before, pk, pq in zip(k0, key.encoder.parameters(), online.parameters()):
        assert torch.allclose(pk, 0.9 * k_before + 0.1 * pq, atol=0, rtol=1e-6)
        assert not pk.requires_grad

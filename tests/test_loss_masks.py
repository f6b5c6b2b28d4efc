"""Known-positive masks: symmetric InfoNCE masks in both directions; the listwise reranker loss drops a "negative"
that is a judged positive of its query, and the collator/trainer pass that mask (plain and GradCache)."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch.nn import functional as F

from retr.retriever.data.training import Passage, TrainExample
from retr.retriever.losses import InfoNCELoss
from retr.retriever.losses.listwise import ListwiseSoftmaxLoss
from retr.retriever.training.collator import RerankCollator


def _ce(logits: list[float], target: int) -> float:
    return -logits[target] + math.log(sum(math.exp(x) for x in logits))


def test_symmetric_infonce_masks_known_positives_in_both_directions():
    torch.manual_seed(0)
    q, p = torch.randn(3, 4), torch.randn(3, 4)  # group size 1: p[i] is query i's positive
    # query 0's judged positives: passages 0 and 1; query 2's: passages 2 and 0; query 1's: its own only
    positive_keys = torch.tensor([[10, 11], [11, -1], [12, 10]])
    passage_keys = torch.tensor([10, 11, 12])
    loss = InfoNCELoss(temperature=1.0, symmetric=True)(q, p, positive_keys, passage_keys)
    s = (q @ p.T).tolist()  # s[i][j] = q_i . p_j
    forward = [_ce([s[0][0], s[0][2]], 0),  # p1 is a positive of q0: not its negative
               _ce(s[1], 1),
               _ce([s[2][1], s[2][2]], 1)]  # p0 is a positive of q2
    back = [_ce([s[0][0], s[1][0]], 0),  # passage 0: q2 judges it relevant -> q2 is no negative
            _ce([s[1][1], s[2][1]], 0),  # passage 1: q0 judges it relevant -> q0 is no negative
            _ce([s[0][2], s[1][2], s[2][2]], 2)]
    expected = (sum(forward) / 3 + sum(back) / 3) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    unmasked_back = sum(_ce([s[j][i] for j in range(3)], i) for i in range(3)) / 3
    assert loss.item() != pytest.approx((sum(forward) / 3 + unmasked_back) / 2, rel=1e-3)  # the old behaviour


def test_symmetric_mask_gives_no_gradient_through_masked_pairs():
    q = torch.randn(2, 4, requires_grad=True)
    p = torch.randn(2, 4)
    keys = torch.tensor([[0, 1], [1, -1]])  # passage 1 is judged relevant to both queries
    InfoNCELoss(temperature=1.0, symmetric=True)(q, p, keys, torch.tensor([0, 1])).backward()
    # query 0 sees passage 0 only (forward: loss 0) and is masked out of passage 1's row (backward): its gradient
    # comes from passage 0's back-direction row alone (1/2 of the rows, 1/2 of the symmetric average)
    qq = q.detach().clone().requires_grad_(True)
    ref = F.cross_entropy(p[:1] @ qq.T, torch.tensor([0])) / 4
    ref.backward()
    torch.testing.assert_close(q.grad[0], qq.grad[0])


def test_listwise_loss_masks_negatives_that_are_known_positives():
    scores = torch.tensor([3.0, 1.0, 2.0, 0.5, 0.1, 0.2])  # two groups of 3, positive first
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]], dtype=torch.uint8)  # column 0 is never masked
    loss = ListwiseSoftmaxLoss(3)(scores, mask)
    assert loss.item() == pytest.approx((_ce([3.0, 2.0], 0) + _ce([0.5, 0.1, 0.2], 0)) / 2, rel=1e-6)
    assert ListwiseSoftmaxLoss(3)(scores).item() == pytest.approx((_ce([3.0, 1.0, 2.0], 0) + _ce([0.5, 0.1, 0.2], 0)) / 2)
    all_masked = ListwiseSoftmaxLoss(2)(torch.tensor([0.0, 5.0], requires_grad=True), torch.tensor([[0, 1]]))
    assert all_masked.item() == 0.0


class _Tok:
    def tokenize(self, queries, passages):
        return {"input_ids": torch.zeros(len(queries), 2, dtype=torch.long)}


def test_rerank_collator_marks_negatives_judged_relevant():
    ex = [TrainExample("q1", "a query", [Passage("d1", "", "pos")], [Passage("d2", "", "judged too")],
                       known_positives=["d1", "d2"]),
          TrainExample("q2", "other", [Passage("d3", "", "pos")], [Passage("d4", "", "a real negative")])]
    batch = RerankCollator(_Tok(), ex, n_negatives=1)([0, 1], 0)
    assert batch["negative_mask"].tolist() == [[0, 1], [0, 0]]
    assert "negative_mask" not in RerankCollator(_Tok(), ex, n_negatives=1, mask_known_positives=False)([0, 1], 0)


@pytest.mark.parametrize("grad_cache", [False, True])
def test_reranker_training_never_trains_a_known_positive_as_negative(tmp_path, tiny_model_dir, grad_cache):
    """Every 'negative' of this Tevatron file is a judged positive of its query: with the mask the loss is 0 and
    no gradient flows (plain and GradCache steps)."""
    from retr.retriever.training.arguments import TrainConfig
    from retr.retriever.training.driver import build_trainer

    rows = [{"query_id": f"q{i}", "query": f"query {i}",
             "positive_passages": [{"docid": f"p{i}", "text": f"positive {i}"}, {"docid": f"x{i}", "text": f"also {i}"}],
             "negative_passages": [{"docid": f"x{i}", "text": f"also {i}"}]} for i in range(4)]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = TrainConfig(output_dir=str(tmp_path / "o"), mode="reranker", model=str(tiny_model_dir), train_data=[str(path)],
                      batch_size=4, train_negatives=1, max_steps=1, save_steps=0, grad_cache=grad_cache,
                      gc_passage_chunk=3, pairs=True)
    trainer = build_trainer(cfg)
    inputs = trainer.collate(trainer.sampler.batches(0)[0], 0)
    assert inputs["negative_mask"][:, 1].tolist() == [1, 1, 1, 1]  # x_i is a positive of q_i (or is the positive)
    assert trainer.compute_gradients(inputs) == 0.0
    grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
    assert grads and all(float(g.abs().max()) == 0.0 for g in grads)

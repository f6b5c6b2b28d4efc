"""Issue 20: cross-encoder heads that learn from step 0 (segment-cosine, re-initialised pooler), their storage,
the pointwise BCE loss, and the --ce-head / --ce-loss options by their result."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch.nn import functional as F

from conftest import one_line_error, run_cli


def _ce(tiny_model_dir, head):
    from retr.retriever.modeling.cross_encoder import CrossEncoder

    torch.manual_seed(0)
    return CrossEncoder.from_pretrained(tiny_model_dir, head=head).eval()


def test_segment_means_by_hand():
    from retr.retriever.modeling.ce_head import SegmentCosine

    cls_, sep, pad = 101, 102, 0
    ids = torch.tensor([[cls_, 5, 6, sep, 7, 8, 9, sep, pad],
                        [cls_, 5, sep, 7, sep, pad, pad, pad, pad]])
    mask = (ids != pad).long()
    torch.manual_seed(0)
    hidden = torch.randn(2, 9, 4)
    head = SegmentCosine(sep, [cls_, sep, pad], scale=3.0)
    q, p = head.segment_means(hidden, ids, mask)
    torch.testing.assert_close(q[0], hidden[0, 1:3].mean(0))
    torch.testing.assert_close(p[0], hidden[0, 4:7].mean(0))
    torch.testing.assert_close(q[1], hidden[1, 1])
    torch.testing.assert_close(p[1], hidden[1, 3])
    with torch.no_grad():
        head.bias.fill_(0.5)
    expected = 3.0 * F.cosine_similarity(q, p, dim=-1) + 0.5
    torch.testing.assert_close(head(hidden, ids, mask), expected)


def test_segment_cosine_head_starts_as_the_scaled_cosine(tiny_model_dir):
    from retr.retriever.modeling.ce_head import SEGMENT_SCALE

    ce = _ce(tiny_model_dir, "segment-cosine")
    assert ce.head == "segment-cosine"
    assert float(ce.model.classifier.weight.detach().abs().sum()) == 0.0  # the [CLS] path adds only its bias at step 0
    assert {"segment.scale", "segment.bias", "model.classifier.weight"} <= set(ce.fresh_parameters)
    assert any("pooler" in n for n in ce.fresh_parameters)
    queries, passages = ["bone fractures vitamin"] * 2, ["Vitamin D deficiency and fractures.", "Coffee and liver."]
    inputs = ce.tokenize(queries, passages)
    with torch.no_grad():
        hidden = ce.model(**inputs, output_hidden_states=True).hidden_states[-1]
        q, p = ce.segment.segment_means(hidden, inputs["input_ids"], inputs["attention_mask"])
        cos = F.cosine_similarity(q, p, dim=-1)
    got = torch.from_numpy(ce.score(queries, passages))
    torch.testing.assert_close(got, SEGMENT_SCALE * cos + float(ce.model.classifier.bias.detach()), rtol=1e-4, atol=1e-4)


def test_pooler_head_reinitialises_the_pooler_and_trains_it_as_a_head(tiny_model_dir):
    from retr.retriever.modeling.cross_encoder import CrossEncoder
    from retr.retriever.training.arguments import TrainConfig
    from retr.retriever.training.trainer import parameter_groups

    plain = CrossEncoder.from_pretrained(tiny_model_dir)  # cls: pooler as in the checkpoint, not fresh
    ce = _ce(tiny_model_dir, "pooler")
    name = "model.bert.pooler.dense.weight"
    assert name not in plain.fresh_parameters and name in ce.fresh_parameters
    before, after = dict(plain.named_parameters())[name], dict(ce.named_parameters())[name]
    assert not torch.equal(before, after)
    assert after.std().item() == pytest.approx(0.02, rel=0.15)  # BERT's initializer_range
    cfg = TrainConfig(mode="reranker", lr=1e-5, head_lr=1e-3, weight_decay=0.1)
    by_id = {id(p): (g["lr"], g["weight_decay"]) for g in parameter_groups(ce, torch.nn.Module(), cfg) for p in g["params"]}
    params = dict(ce.named_parameters())
    assert by_id[id(params[name])] == (1e-3, 0.0)  # fresh: --head-lr, no weight decay
    assert by_id[id(params["model.classifier.weight"])] == (1e-3, 0.0)
    assert by_id[id(params["model.bert.encoder.layer.0.attention.self.query.weight"])] == (1e-5, 0.1)


def test_segment_cosine_head_saves_and_reloads(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    from retr.retriever.modeling.cross_encoder import CE_CONFIG, CrossEncoder
    from retr.retriever.modeling.ce_head import HEAD_FILE
    from retr.retriever.modeling.safe_load import ModelLoadError

    ce = _ce(tiny_model_dir, "segment-cosine")
    with torch.no_grad():
        ce.segment.scale.fill_(7.5)
        ce.segment.bias.fill_(-1.25)
        ce.model.classifier.weight.normal_()
    ce.save(tmp_path / "ce")
    assert json.loads((tmp_path / "ce" / CE_CONFIG).read_text())["head"] == "segment-cosine"
    assert load_file(str(tmp_path / "ce" / HEAD_FILE))["scale"].item() == 7.5
    back = CrossEncoder.from_pretrained(tmp_path / "ce", head="cls")  # a saved head is kept
    assert back.head == "segment-cosine" and back.fresh_parameters == ()
    assert back.segment.scale.item() == 7.5 and back.segment.bias.item() == -1.25
    qs, ps = ["aspirin heart"] * 3, ["Aspirin and heart attack.", "Statins.", "Sleep and obesity."]
    torch.testing.assert_close(torch.from_numpy(back.score(qs, ps)), torch.from_numpy(ce.score(qs, ps)))
    (tmp_path / "ce" / HEAD_FILE).unlink()
    with pytest.raises(ModelLoadError, match=HEAD_FILE):
        CrossEncoder.from_pretrained(tmp_path / "ce")
    cfg = tmp_path / "ce" / CE_CONFIG
    cfg.write_text(json.dumps({"max_length": 64, "head": "magic"}))
    with pytest.raises(ModelLoadError, match="unknown cross-encoder head 'magic'"):
        CrossEncoder.from_pretrained(tmp_path / "ce")


def test_old_cross_encoder_directory_loads_with_the_cls_head(tiny_model_dir, tmp_path):
    from retr.retriever.modeling.cross_encoder import CE_CONFIG, CrossEncoder

    _ce(tiny_model_dir, "cls").save(tmp_path / "ce")
    (tmp_path / "ce" / CE_CONFIG).write_text(json.dumps({"max_length": 48}))  # as saved before issue 20
    old = CrossEncoder.from_pretrained(tmp_path / "ce")
    assert old.head == "cls" and old.segment is None and old.max_length == 48


def test_pointwise_bce_by_hand_with_the_known_positive_mask():
    from retr.retriever.losses.listwise import PointwiseBCELoss

    scores = torch.tensor([2.0, -1.0, 0.5, 1.0, 3.0, -2.0])  # 2 groups of 3, positive first
    mask = torch.tensor([[0, 0, 1], [0, 0, 0]], dtype=torch.uint8)  # query 0's third passage is a judged positive

    def bce(x, y):
        return -(y * math.log(1 / (1 + math.exp(-x))) + (1 - y) * math.log(1 - 1 / (1 + math.exp(-x))))

    kept = [bce(2.0, 1), bce(-1.0, 0), bce(1.0, 1), bce(3.0, 0), bce(-2.0, 0)]
    loss = PointwiseBCELoss(3)
    assert loss(scores, mask).item() == pytest.approx(sum(kept) / 5, rel=1e-5)
    assert loss(scores).item() == pytest.approx((sum(kept) + bce(0.5, 0)) / 6, rel=1e-5)
    assert loss(torch.zeros(6)).item() == pytest.approx(math.log(2), rel=1e-6)  # chance
    with pytest.raises(ValueError):
        PointwiseBCELoss(1)


def _train(tiny_beir, tiny_model_dir, out, capsys, *extra):
    code, _, err = run_cli(["train", "--mode", "reranker", "-o", out, "-m", tiny_model_dir, "-d", tiny_beir,
                            "--split", "test", "--train-negatives", "3", "--batch-size", "4", "--max-steps", "2",
                            "--logging-steps", "1", "--save-steps", "0", "--lr", "1e-5", "--warmup-ratio", "0",
                            *map(str, extra)], capsys)
    assert code == 0, err
    return [json.loads(line)["loss"] for line in (out / "train_log.jsonl").read_text().splitlines()
            if "loss" in json.loads(line)]


def test_ce_loss_option_by_result(tiny_beir, tiny_model_dir, tmp_path, capsys):
    """With the cls head every score starts near 0: the listwise loss of 1 + 3 passages is near ln 4, BCE near ln 2."""
    listwise = _train(tiny_beir, tiny_model_dir, tmp_path / "lw", capsys)
    bce = _train(tiny_beir, tiny_model_dir, tmp_path / "bce", capsys, "--ce-loss", "bce")
    assert listwise[0] == pytest.approx(math.log(4), abs=0.05)
    assert bce[0] == pytest.approx(math.log(2), abs=0.05)
    assert json.loads((tmp_path / "bce" / "train_config.json").read_text())["ce_loss"] == "bce"


def test_ce_head_option_by_result(tiny_beir, tiny_model_dir, tmp_path, capsys):
    from retr.retriever.modeling.cross_encoder import CrossEncoder
    from retr.retriever.modeling.ce_head import SEGMENT_SCALE

    _train(tiny_beir, tiny_model_dir, tmp_path / "seg", capsys, "--ce-head", "segment-cosine", "--head-lr", "0.1")
    model = CrossEncoder.from_pretrained(tmp_path / "seg" / "model")
    assert model.head == "segment-cosine"
    assert model.segment.scale.item() != SEGMENT_SCALE  # trained at --head-lr
    assert float(model.model.classifier.weight.detach().abs().sum()) > 0  # the [CLS] path grew from zero
    # --ce-scale sets the start: with --lr 0 and --head-lr 0 nothing moves, so the saved scale is the given one
    _train(tiny_beir, tiny_model_dir, tmp_path / "s3", capsys, "--ce-head", "segment-cosine", "--ce-scale", "3",
           "--lr", "0", "--head-lr", "0")
    assert CrossEncoder.from_pretrained(tmp_path / "s3" / "model").segment.scale.item() == 3.0
    _train(tiny_beir, tiny_model_dir, tmp_path / "cls", capsys)
    assert CrossEncoder.from_pretrained(tmp_path / "cls" / "model").head == "cls"
    code, _, err = run_cli(["train", "--mode", "supervised", "-o", tmp_path / "x", "-m", tiny_model_dir, "-d",
                            tiny_beir, "--split", "test", "--ce-head", "segment-cosine"], capsys)
    assert code == 2 and "--mode reranker only" in one_line_error(err)
    code, _, err = run_cli(["train", "--mode", "reranker", "-o", tmp_path / "z", "-m", tiny_model_dir, "-d",
                            tiny_beir, "--split", "test", "--ce-scale", "2"], capsys)
    assert code == 2 and "ce_head segment-cosine" in one_line_error(err)
    code, _, err = run_cli(["train", "--mode", "reranker", "-o", tmp_path / "y", "-m", tiny_model_dir, "-d",
                            tiny_beir, "--split", "test", "--ce-head", "mean"], capsys)
    assert code == 2 and "ce_head" in one_line_error(err)


def test_search_reranks_with_a_segment_cosine_cross_encoder(tiny_beir, tiny_model_dir, tmp_path, capsys):
    from retr.retriever.data import load_beir
    from retr.retriever.rerank import Reranker

    ce = _ce(tiny_model_dir, "segment-cosine")
    ce.save(tmp_path / "ce")
    code, _, err = run_cli(["index", "-m", tiny_model_dir, "-d", tiny_beir, "-o", tmp_path / "idx"], capsys)
    assert code == 0, err
    q = load_beir(tiny_beir, "test").queries["q4"]
    code, _, err = run_cli(["search", "-i", tmp_path / "idx", "-q", q, "-k", "8", "-o", tmp_path / "first.json"], capsys)
    assert code == 0, err
    code, _, err = run_cli(["search", "-i", tmp_path / "idx", "-q", q, "-k", "8", "--rerank", tmp_path / "ce",
                            "--rerank-top-k", "5", "--corpus", tiny_beir, "-o", tmp_path / "hits.json"], capsys)
    assert code == 0, err
    first = [h["docid"] for h in json.loads((tmp_path / "first.json").read_text())["q1"]]
    got = json.loads((tmp_path / "hits.json").read_text())["q1"]
    ds = load_beir(tiny_beir, "test")
    ranked = Reranker(str(tmp_path / "ce")).rank(q, [ds.corpus.passage(d) for d in first[:5]], first[:5])
    assert [h["docid"] for h in got] == [r.docid for r in ranked.results] + first[5:]
    assert got[0]["score"] == pytest.approx(ranked.results[0].score, rel=1e-4)

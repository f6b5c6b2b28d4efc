"""Cross-encoder scoring heads that work from step 0 when the cross-encoder starts from a bi-encoder.

A bi-encoder such as all-MiniLM-L6-v2 was trained with mean pooling: its [CLS] state and its pooler (bias
exactly 0, never trained) carry no query-passage relevance, so a fresh classifier over [CLS] outputs a nearly
constant score and the listwise loss sits at chance (ln G) for tens of steps (RESULTS.md §4). Yet inside the
joint forward the **mean of the query-segment token states** and the **mean of the passage-segment token states**
already agree for relevant pairs (a probe on 48 SciFact groups of 1 positive + 3 random negatives: their cosine
picks the positive 92% of the time at step 0). Heads (``--ce-head``):

- ``cls``: the Hugging Face sequence-classification head as loaded ([CLS] -> pooler -> linear); the old default.
- ``pooler``: the same, with the pooler re-initialised and counted among the fresh parameters (``--head-lr``,
  no weight decay), as a randomly initialised pooler is a better start than an untrained one.
- ``segment-cosine``: ``score = scale * cos(mean_q, mean_p) + bias + classifier([CLS])`` with the pooler
  re-initialised as in ``pooler`` and the classifier's weight zeroed, so the step-0 score *is* the segment
  cosine (times ``scale``, initialised to ``SEGMENT_SCALE``) and the [CLS] path grows from there. ``scale`` and
  ``bias`` are fresh parameters. Chosen by measurement as the recommended start (RESULTS.md §14): on SciFact
  train (1 positive + 3 BM25 negatives) its listwise loss averages 0.77 over the first 10 steps, where ``cls``
  stays at ln 4 = 1.386 (1.384) and ``pooler`` barely leaves it (1.360); trained 80 steps it reranks BM25's
  top 100 at nDCG@10 0.6889 alone (BM25 0.6789). The initial ``scale`` (``--ce-scale``) matters: where the
  step-0 cosine ranks poorly (NFCorpus with BM25 negatives: 31% top-1) scale 20 starts above chance and ~2 at
  it.

Segments: tokens before the first separator token are the query, tokens after it the passage (BERT's
``[CLS] q [SEP] p [SEP]`` and RoBERTa's ``<s> q </s></s> p </s>`` alike); special and padding tokens are left out
of both means. Memory: one [n, seq, hidden] hidden-state tensor (already computed by the forward) and two
[n, hidden] means per batch of n pairs.

Storage: a plain transformers directory (loads in sentence-transformers too, which then scores with the [CLS]
path only) plus ``retr_ce_head.safetensors`` (``scale``, ``bias``; float32 tensors) and ``"head"`` in
``retr_cross_encoder.json``. No pickle, no code from the directory.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

HEADS = ("cls", "pooler", "segment-cosine")
HEAD_FILE = "retr_ce_head.safetensors"
SEGMENT_SCALE = 20.0  # cosine differences of ~0.1 between a positive and a negative become a logit gap of ~2


class SegmentCosine(nn.Module):
    """``scale * cos(mean of query-segment states, mean of passage-segment states) + bias`` -> [n] (float32).

    ``special_ids``: token ids left out of both means (e.g. [CLS], [SEP], [PAD]); ``sep_id``: the token whose
    first occurrence ends the query segment."""

    def __init__(self, sep_id: int, special_ids: list[int], scale: float = SEGMENT_SCALE):
        super().__init__()
        self.sep_id = int(sep_id)
        self.register_buffer("special_ids", torch.tensor(sorted(set(special_ids)), dtype=torch.long), persistent=False)
        self.scale = nn.Parameter(torch.tensor(float(scale)))
        self.bias = nn.Parameter(torch.tensor(0.0))

    def segment_means(self, hidden: torch.Tensor, input_ids: torch.Tensor,
                      attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean query-segment and passage-segment states, each [n, hidden] (float32)."""
        after_sep = torch.cumsum((input_ids == self.sep_id).long(), dim=1) > 0
        content = attention_mask.bool() & ~torch.isin(input_ids, self.special_ids.to(input_ids.device))
        h = hidden.float()

        def mean(mask: torch.Tensor) -> torch.Tensor:
            m = mask.unsqueeze(-1).float()
            return (h * m).sum(1) / m.sum(1).clamp_min(1.0)

        return mean(content & ~after_sep), mean(content & after_sep)

    def forward(self, hidden: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        q, p = self.segment_means(hidden, input_ids, attention_mask)
        return self.scale * nn.functional.cosine_similarity(q, p, dim=-1, eps=1e-6) + self.bias

    def save(self, directory: Path) -> None:
        from safetensors.torch import save_file

        save_file({"scale": self.scale.detach().float().reshape(1).cpu(),
                   "bias": self.bias.detach().float().reshape(1).cpu()}, str(Path(directory) / HEAD_FILE))

    def load(self, directory: Path) -> None:
        from safetensors.torch import load_file

        path = Path(directory) / HEAD_FILE
        try:
            tensors = load_file(str(path))
            scale, bias = tensors["scale"], tensors["bias"]
        except FileNotFoundError:
            from .safe_load import ModelLoadError

            raise ModelLoadError(f"{path}: missing (the cross-encoder's segment-cosine head)") from None
        except Exception as e:  # truncated file, missing tensor
            from .safe_load import ModelLoadError

            raise ModelLoadError(f"{path}: cannot load the segment-cosine head ({str(e).splitlines()[0][:120]})") from None
        with torch.no_grad():
            self.scale.copy_(scale.reshape(()))
            self.bias.copy_(bias.reshape(()))


def find_pooler(model: nn.Module) -> nn.Module | None:
    """The Hugging Face pooler of a sequence-classification model (BERT-style ``.pooler``), if it has one."""
    base = getattr(model, getattr(model, "base_model_prefix", ""), None)
    return getattr(base, "pooler", None) if base is not None else None


def reinit_pooler(model: nn.Module) -> list[str]:
    """Re-initialise the pooler's linear layers as BERT initialises them (weights ~ N(0, initializer_range),
    biases 0); its parameter names in ``model``. (Written out, since transformers' ``_init_weights`` skips modules
    it marks as already initialised.)"""
    pooler = find_pooler(model)
    if pooler is None:
        return []
    std = float(getattr(model.config, "initializer_range", 0.02))
    with torch.no_grad():
        for m in pooler.modules():
            if isinstance(m, nn.Linear):
                m.weight.normal_(0.0, std)
                if m.bias is not None:
                    m.bias.zero_()
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for p in pooler.parameters()]


def classifier_weight(model: nn.Module) -> nn.Parameter | None:
    """The last linear layer's weight of a sequence-classification head (``classifier`` / ``score``)."""
    head = getattr(model, "classifier", None) or getattr(model, "score", None)
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)] if head is not None else []
    return linears[-1].weight if linears else None

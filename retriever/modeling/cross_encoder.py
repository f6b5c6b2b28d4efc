"""``CrossEncoder``: a Hugging Face sequence-classification model scoring (query, passage) pairs jointly.

Any local directory or hub id loads (``num_labels=1`` regression heads and 2-label heads, whose "relevant"
logit is used). Starting from an encoder without a head (e.g. MiniLM) gives a fresh, untrained head, of the kind
``head`` names (``cls`` | ``pooler`` | ``segment-cosine``: ``ce_head.py``). ``save`` writes a plain transformers
directory, which sentence-transformers' ``CrossEncoder`` also loads (for a ``segment-cosine`` head it then scores
with the [CLS] path only), plus retr's ``retr_cross_encoder.json`` (max length, head) and the head's own
``retr_ce_head.safetensors``.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .ce_head import HEADS, SegmentCosine, classifier_weight, reinit_pooler
from .encoder import inference
from .resolve import resolve_model_path


log = logging.getLogger(__name__)

CE_CONFIG = "retr_cross_encoder.json"  # the max (query + passage) length the model was trained with; its head


class CrossEncoder(nn.Module):
    shared = True  # one tower (lets the trainer treat it like a shared-tower model)

    def __init__(self, model: nn.Module, tokenizer: Any, max_length: int = 512, name: str = "",
                 fresh_parameters: Sequence[str] = (), head: str = "cls"):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"cross-encoder head must be one of {', '.join(HEADS)}, got {head!r}")
        self.model, self.tokenizer, self.max_length, self.head = model, tokenizer, max_length, head
        self.segment = None
        if head == "segment-cosine":
            if tokenizer.sep_token_id is None:
                raise ValueError("the segment-cosine head needs a tokenizer with a separator token")
            self.segment = SegmentCosine(tokenizer.sep_token_id, tokenizer.all_special_ids)
        # names (as in self.named_parameters()) the checkpoint did not hold: a new scoring head, which
        # the trainer may give its own learning rate (--head-lr)
        self.fresh_parameters = tuple(fresh_parameters)
        self.name = name or getattr(model.config, "_name_or_path", "cross-encoder")
        self.precision = "auto"
        self.train(model.training)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, max_length: int | None = None, head: str | None = None,
                        head_scale: float | None = None, **_: Any) -> "CrossEncoder":
        """Load a cross-encoder, or start one from an encoder. ``head`` applies only when the scoring head is new
        (the classifier is not in the checkpoint; default ``cls``); a saved cross-encoder keeps the head it was
        trained with (``retr_cross_encoder.json``; none there = ``cls``). ``head_scale``: a new segment-cosine
        head's initial scale (default ``SEGMENT_SCALE``). ``ModelLoadError`` (one line) for a
        damaged directory."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        path = resolve_model_path(str(name_or_path))
        from .safe_load import check_model_dir, hf_load

        check_model_dir(path)  # one line for a damaged directory; no code from it ever runs (safe_load)
        tokenizer = hf_load(AutoTokenizer.from_pretrained, path, "tokenizer")
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # a fresh head is expected when starting from an encoder
        try:
            model, info = hf_load(AutoModelForSequenceClassification.from_pretrained, path, "cross-encoder",
                                  num_labels=_num_labels(path), output_loading_info=True)
        finally:
            hf_logging.set_verbosity(verbosity)
        model.eval()
        from .encoder import position_limit

        positions = position_limit(model, tokenizer)
        limit = min(512, positions)
        own = Path(path) / CE_CONFIG
        saved: dict[str, Any] = {}
        if own.exists():
            from retr.indexing.atomic import read_json

            saved = read_json(own)
            saved = saved if isinstance(saved, dict) else {}
        if max_length is None and "max_length" in saved:
            max_length = int(saved["max_length"])
        if max_length is not None and max_length > positions:  # issue 18: else a RuntimeError in the embeddings
            log.warning("--passage-max-length %d is more than the cross-encoder's %d positions; using %d",
                        max_length, positions, positions)
            max_length = positions
        missing = set(info.get("missing_keys", []))
        fresh = [n for n, _ in model.named_parameters() if n in missing]
        new_head = any(n.startswith(("classifier.", "score.")) for n in fresh)
        chosen = (head or "cls") if new_head else str(saved.get("head", "cls"))
        if chosen not in HEADS:
            from .safe_load import ModelLoadError

            raise ModelLoadError(f"{own}: unknown cross-encoder head {chosen!r} (retr knows {', '.join(HEADS)})")
        if new_head and chosen in ("pooler", "segment-cosine"):
            fresh += [n for n in reinit_pooler(model) if n not in fresh]
        if new_head and chosen == "segment-cosine":
            weight = classifier_weight(model)
            if weight is not None:  # the step-0 score is the segment cosine alone
                torch.nn.init.zeros_(weight)
        ce = cls(model, tokenizer, max_length or limit, name=str(name_or_path),
                 fresh_parameters=[f"model.{n}" for n in fresh], head=chosen)
        if ce.segment is not None:
            if new_head:
                ce.fresh_parameters += tuple(f"segment.{n}" for n, _ in ce.segment.named_parameters())
                if head_scale is not None:
                    with torch.no_grad():
                        ce.segment.scale.fill_(float(head_scale))
            else:
                ce.segment.load(Path(path))
        return ce

    def save(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        self.model.config.sentence_transformers = {"activation_fn": "torch.nn.modules.linear.Identity"}
        self.model.save_pretrained(directory, safe_serialization=True)
        self.tokenizer.save_pretrained(directory)
        import json

        (directory / CE_CONFIG).write_text(json.dumps({"max_length": self.max_length, "head": self.head}))
        if self.segment is not None:
            self.segment.save(directory)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, queries: Sequence[str], passages: Sequence[str]) -> dict[str, torch.Tensor]:
        return dict(self.tokenizer(list(queries), list(passages), padding=True, truncation="only_second",
                                   max_length=self.max_length, return_tensors="pt"))

    def _logits(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """[n] scores of n tokenized pairs."""
        if self.segment is None:
            logits = self.model(**inputs).logits
            return logits[:, 0] if logits.size(-1) == 1 else logits[:, -1]
        out = self.model(**inputs, output_hidden_states=True)
        logits = out.logits[:, 0] if out.logits.size(-1) == 1 else out.logits[:, -1]
        return logits.float() + self.segment(out.hidden_states[-1], inputs["input_ids"], inputs["attention_mask"])

    def forward(self, pairs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Training forward: {"pairs": [n, 1] relevance scores}."""
        return {"pairs": self._logits(pairs).unsqueeze(-1)}

    def score(self, queries: Sequence[str], passages: Sequence[str], batch_size: int = 32,
              show_progress: bool = False) -> np.ndarray:
        """Relevance score of each (query, passage) pair, batched by length."""
        n = len(queries)
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        lengths = [len(q) + len(p) for q, p in zip(queries, passages)]
        order = np.argsort(lengths)[::-1]
        out = np.empty(n, dtype=np.float32)
        with inference(self, self.device, self.precision, n, "rerank", show_progress, unit="pair") as advance:
            for s in range(0, n, batch_size):
                rows = order[s:s + batch_size]
                inputs = self.tokenize([queries[i] for i in rows], [passages[i] for i in rows])
                out[rows] = self._logits({k: v.to(self.device) for k, v in inputs.items()}).float().cpu().numpy()
                advance(len(rows))
        return out


def _num_labels(path: str) -> int:
    import json

    cfg = Path(path) / "config.json"
    if cfg.exists():
        data = json.loads(cfg.read_text())
        arch = " ".join(data.get("architectures") or [])
        if "SequenceClassification" in arch:
            return int(data.get("num_labels") or len(data.get("id2label") or {}) or 1)
    return 1

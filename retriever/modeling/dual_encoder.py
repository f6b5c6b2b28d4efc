"""``DualEncoder``: a query tower and a passage tower, shared (one ``Encoder``) or separate.

Shared towers save as one plain model directory (loads in transformers and sentence-transformers);
separate towers save as ``query/`` and ``passage/`` sub-directories (each a full encoder directory) plus
``retr_dual_encoder.json``, the layout Tevatron and DPR use.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .encoder import Encoder
from .resolve import resolve_model_path

DUAL_CONFIG = "retr_dual_encoder.json"


class DualEncoder(nn.Module):
    def __init__(self, query_encoder: Encoder, passage_encoder: Encoder | None = None):
        super().__init__()
        self.query_encoder = query_encoder
        self.passage_encoder = passage_encoder  # None: shared towers

    @property
    def shared(self) -> bool:
        return self.passage_encoder is None

    @property
    def passage_tower(self) -> Encoder:
        return self.query_encoder if self.passage_encoder is None else self.passage_encoder

    @property
    def dim(self) -> int:
        return self.query_encoder.dim

    @property
    def name(self) -> str:
        return self.query_encoder.name

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, separate: bool = False, **overrides: Any) -> "DualEncoder":
        """Load a retr dual-encoder directory, or any encoder (then ``separate=True`` copies it into two towers)."""
        path = Path(resolve_model_path(str(name_or_path))) if not Path(str(name_or_path)).is_dir() else Path(name_or_path)
        if (path / DUAL_CONFIG).exists():
            q = Encoder.from_pretrained(path / "query", **overrides)
            p = Encoder.from_pretrained(path / "passage", **overrides)
            q.name = p.name = str(name_or_path)
            return cls(q, p)
        q = Encoder.from_pretrained(name_or_path, **overrides)
        if not separate:
            return cls(q)
        p = Encoder.from_pretrained(name_or_path, **overrides)
        return cls(q, p)

    def save(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        if self.shared:
            self.query_encoder.save(directory)
            return
        self.query_encoder.save(directory / "query")
        self.passage_encoder.save(directory / "passage")
        (directory / DUAL_CONFIG).write_text(json.dumps({"towers": "separate", "query": "query", "passage": "passage"}, indent=2))

    def encode_queries(self, texts: Sequence[str], **kw: Any) -> np.ndarray:
        return self.query_encoder.encode(texts, is_query=True, **kw)

    def encode_passages(self, texts: Sequence[str], **kw: Any) -> np.ndarray:
        return self.passage_tower.encode(texts, is_query=False, **kw)

    def forward(self, queries: dict[str, torch.Tensor] | None = None,
                passages: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Training forward (one call, so DDP sees every tower used in a step): {"queries": [n, d], "passages": [m, d]}."""
        out = {}
        if queries is not None:
            out["queries"] = self.query_encoder(**queries)
        if passages is not None:
            out["passages"] = self.passage_tower(**passages)
        return out

    def set_precision(self, precision: str) -> None:
        self.query_encoder.precision = precision
        self.passage_tower.precision = precision

    def set_backend(self, backend: str, precision: str = "auto", threads: int | None = None) -> None:
        """Run inference on ``torch`` (the model), ``onnx`` (ONNX Runtime) or ``openvino`` (issue 22,
        ``retr.retriever.backends``): an export found in the model directory is used, else the tower is exported
        now. ``ValueError`` for a backend or precision that cannot run."""
        from ..backends import make_runner

        for tower in [self.query_encoder] if self.shared else [self.query_encoder, self.passage_encoder]:
            tower.runner = make_runner(backend, tower, precision, tower.source_dir, threads)

    def forward_queries(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.query_encoder(**batch)

    def forward_passages(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.passage_tower(**batch)

    def describe(self) -> dict[str, Any]:
        d = self.passage_tower.describe()
        d["towers"] = "shared" if self.shared else "separate"
        d["query_prefix"] = self.query_encoder.config.query_prefix
        d["query_max_length"] = self.query_encoder.config.query_max_length
        return d

    def fingerprint(self) -> str:
        if self.shared:
            return self.query_encoder.fingerprint()
        both = self.query_encoder.fingerprint() + self.passage_encoder.fingerprint()
        return hashlib.sha256(both.encode()).hexdigest()[:16]

"""Training configuration: one dataclass, built by the CLI from flags or a YAML/JSON file, saved beside the run."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any


@dataclass
class TrainConfig:
    output_dir: str = "out/train"
    mode: str = "supervised"  # supervised | unsupervised | reranker
    # model
    model: str = "minilm"  # directory, hub id or `minilm`
    separate_towers: bool = False
    pooling: str | None = None
    normalize: bool | None = None
    query_prefix: str | None = None
    passage_prefix: str | None = None
    query_max_length: int | None = None
    passage_max_length: int | None = None
    query_instruction: str | None = None  # template for the query prefix, e.g. "Instruct: {task}\nQuery: "
    task: str | None = None  # fills {task} in query_instruction
    torch_dtype: str | None = None  # auto | fp32 | fp16 | bf16: dtype the weights are loaded in
    # data
    train_data: list[str] = field(default_factory=list)  # BEIR folders / Tevatron JSONL / text files
    train_split: str = "train"
    negatives_file: str | None = None  # Tevatron JSONL from `retr mine` (supervised, BEIR input)
    train_negatives: int = 1  # hard negatives per query (supervised)
    train_random_negatives: int = 0  # reranker: random negatives (other queries' positives) per query, too
    pairs: bool = False  # one example per (query, positive) pair instead of per query
    batching: str = "random"  # random | b3
    b3_teacher: str = "minilm"
    b3_p: int = 30
    b3_m: int = 100
    b3_cluster_size: int = 32
    b3_algorithm: str = "metis"  # metis | leiden | louvain
    b3_cache: str | None = None  # default: ~/.cache/retr/b3
    eval_data: str | None = None  # BEIR folder evaluated every eval_steps
    eval_split: str = "test"
    # Contriever crops (unsupervised)
    chunking: str = "document"  # stream (Contriever's: one token stream across documents) | document (retr's)
    token_cache: str | None = None  # tokenised corpora (default: ~/.cache/retr/tokens)
    chunk_length: int = 256
    ratio_min: float = 0.1
    ratio_max: float = 0.5
    deletion_prob: float = 0.1
    # optimisation
    epochs: int = 1
    max_steps: int | None = None  # overrides epochs when set
    batch_size: int = 32  # global contrastive batch (queries per step, summed over ranks)
    lr: float = 2e-5
    head_lr: float | None = None  # lr for parameters new to the checkpoint (a cross-encoder's fresh head)
    weight_decay: float = 0.01
    warmup_steps: int | None = None
    warmup_ratio: float = 0.1
    max_grad_norm: float | None = 1.0
    seed: int = 42
    precision: str = "auto"  # auto (fp16 on CUDA, fp32 on CPU) | fp32 | fp16 | bf16
    # loss
    temperature: float = 0.05
    learnable_temperature: bool = False
    symmetric: bool = False
    similarity: str = "dot"  # dot | cos
    # Matryoshka (MRL): InfoNCE summed over these embedding prefixes (e.g. [384, 256, 128, 64]); [] = off
    matryoshka_dims: list[int] = field(default_factory=list)
    matryoshka_weights: list[float] | None = None  # one per dim (default 1 each)
    # MoCo (unsupervised)
    moco: bool = True
    queue_size: int = 131072
    momentum: float = 0.9995
    queue_init: str = "empty"  # random (Contriever's: random unit vectors) | empty (retr's)
    gather_negatives: bool = True  # DDP: every query sees every rank's passages (off: local negatives only)
    # GradCache
    grad_cache: bool = False
    gc_query_chunk: int = 32
    gc_passage_chunk: int = 32
    gradient_checkpointing: bool = False  # HF activation checkpointing of every transformer block (less memory)
    # checkpoints & logging
    save_steps: int = 500
    save_total_limit: int = 2
    logging_steps: int = 10
    eval_steps: int | None = None
    report_to: list[str] = field(default_factory=list)  # e.g. ["tensorboard"]
    resume: bool = False
    # issue 20: cross-encoder start and loss (reranker mode)
    ce_head: str = "cls"  # cls | pooler | segment-cosine: the head of a cross-encoder started from an encoder
    ce_loss: str = "listwise"  # listwise (softmax over 1 positive + negatives) | bce (pointwise)
    ce_scale: float | None = None  # initial scale of a new segment-cosine head (default 20)

    def __post_init__(self) -> None:
        if self.mode not in ("supervised", "unsupervised", "reranker"):
            raise ValueError(f"mode must be supervised, unsupervised or reranker, got {self.mode!r}")
        if self.precision not in ("auto", "fp32", "fp16", "bf16"):
            raise ValueError(f"precision must be auto, fp32, fp16 or bf16, got {self.precision!r}")
        if self.batching not in ("random", "b3"):
            raise ValueError(f"batching must be random or b3, got {self.batching!r}")
        if self.chunking not in ("stream", "document"):
            raise ValueError(f"chunking must be stream or document, got {self.chunking!r}")
        if self.queue_init not in ("random", "empty"):
            raise ValueError(f"queue_init must be random or empty, got {self.queue_init!r}")
        if self.matryoshka_dims and self.mode == "reranker":
            raise ValueError("--matryoshka-dims trains embeddings: not for --mode reranker")
        if self.matryoshka_dims and self.mode == "unsupervised" and self.moco:
            raise ValueError("--matryoshka-dims is not supported with MoCo (its queue holds full-size keys): "
                             "use --in-batch")
        if self.ce_head not in ("cls", "pooler", "segment-cosine"):  # issue 20
            raise ValueError(f"ce_head must be cls, pooler or segment-cosine, got {self.ce_head!r}")
        if self.ce_loss not in ("listwise", "bce"):
            raise ValueError(f"ce_loss must be listwise or bce, got {self.ce_loss!r}")
        if self.ce_scale is not None and self.ce_head != "segment-cosine":
            raise ValueError("ce_scale is the initial scale of the segment-cosine head: use it with ce_head "
                             "segment-cosine")
        if self.batch_size < 1 or self.epochs < 1:
            raise ValueError("batch_size and epochs must be >= 1")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> "TrainConfig":
        """Read YAML or JSON; unknown keys are an error naming the file and key."""
        from retr.retriever.data.errors import DataError

        path = Path(path)
        if not path.exists():
            raise DataError(path, None, "config file not found")
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            raw = yaml.safe_load(text) or {}
        else:
            raw = json.loads(text)
        if not isinstance(raw, dict):
            raise DataError(path, None, "config must be a mapping of option names to values")
        known = {f.name for f in fields(cls)}
        for key in raw:
            if key not in known:
                raise DataError(path, None, f"unknown option {key!r}")
        raw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**raw)

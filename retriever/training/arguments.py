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
    # issue 19: LoRA adapters through peft (retriever/modeling/lora.py); lora_r 0 = full fine-tuning
    lora_r: int = 0
    lora_alpha: float | None = None  # default 2 * lora_r
    lora_dropout: float | None = None  # default 0.1
    lora_target_modules: list[str] = field(default_factory=list)  # [] = PEFT's default for the architecture
    merge_lora: bool = False  # also save OUTPUT/model-merged: the adapter folded into the base weights
    # issue 20: distillation from teacher scores (`retr score`); the scored file is the training data
    distill: str | None = None  # margin-mse | kl | soft-infonce
    teacher_scores: str | None = None  # Tevatron JSONL with a "score" on every passage
    teacher_temperature: float = 1.0  # teacher scores / this (the student's scale)
    distill_infonce_weight: float = 0.0  # + this x the contrastive loss (InfoNCE, or listwise for a reranker)
    # issue 21: the B3 authors' construction (see retriever/training/b3_authors.py)
    b3_mutual_edges: bool = False  # edge (i, j) only if j is in i's window and i in j's
    b3_exact_k: bool = False  # clusters of exactly b3_cluster_size
    b3_clusters_per_batch: int | None = None  # batches of whole clusters (needs b3_exact_k, batch = c * K)
    b3_cluster_negatives: int = 0  # B3++: hard negatives per query from its cluster's pooled windows
    b3_sibling_exclusion: bool = False  # rank windows skip queries sharing a judged positive
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
        # issue 19: LoRA options only with --lora-r, and in range
        if self.lora_r:
            self.lora_settings()
        elif self.lora_r < 0:
            raise ValueError(f"--lora-r must be at least 1 (0 = off), got {self.lora_r}")
        else:
            given = [flag for flag, on in (("--merge-lora", self.merge_lora), ("--lora-alpha", self.lora_alpha),
                                           ("--lora-target-modules", self.lora_target_modules),
                                           ("--lora-dropout", self.lora_dropout is not None)) if on]
            if given:
                raise ValueError(f"{given[0]} needs --lora-r (the adapter rank)")

        # issue 20: distillation
        if self.distill is not None and self.distill not in ("margin-mse", "kl", "soft-infonce"):
            raise ValueError(f"distill must be margin-mse, kl or soft-infonce, got {self.distill!r}")
        if self.distill == "soft-infonce" and self.mode == "reranker":
            raise ValueError("--distill soft-infonce needs in-batch passages: dual encoders only (a cross-encoder "
                             "takes margin-mse or kl)")
        if (self.distill is None) != (self.teacher_scores is None):
            raise ValueError("--distill and --teacher-scores go together")
        if self.distill is not None and self.mode == "unsupervised":
            raise ValueError("--distill needs --mode supervised or reranker")
        if self.distill is not None and (self.train_data or self.negatives_file):
            raise ValueError("--teacher-scores is the training data when distilling: drop --data / --negatives")
        if self.distill is not None and self.matryoshka_dims:
            raise ValueError("--distill is not combined with --matryoshka-dims")
        if self.teacher_temperature <= 0 or self.distill_infonce_weight < 0:
            raise ValueError("--teacher-temperature must be > 0 and --distill-infonce-weight >= 0")
        if self.symmetric and self.mode == "reranker":
            raise ValueError("--symmetric adds InfoNCE's passage-to-query direction: dual encoders only, not "
                             "--mode reranker")
        if self.symmetric and self.distill is not None and self.distill_infonce_weight == 0:
            raise ValueError("--symmetric adds InfoNCE's passage-to-query direction, and with --distill the InfoNCE "
                             "term is off (--distill-infonce-weight 0): give a weight > 0 or drop --symmetric")

        if self.b3_cluster_negatives < 0:  # issue 21
            raise ValueError("--b3-cluster-negatives must be >= 0")
        if self.batching != "b3":  # issue 21's options change B3 mining only: never ignored silently
            given = [flag for flag, on in (("--b3-mutual-edges", self.b3_mutual_edges), ("--b3-exact-k", self.b3_exact_k),
                                           ("--b3-clusters-per-batch", self.b3_clusters_per_batch is not None),
                                           ("--b3-cluster-negatives", self.b3_cluster_negatives),
                                           ("--b3-sibling-exclusion", self.b3_sibling_exclusion)) if on]
            if given:
                raise ValueError(f"{given[0]} needs --batching b3")
        elif self.mode == "unsupervised":
            raise ValueError("B3 batching needs (query, positive) examples: use --mode supervised or reranker")
        if self.b3_cluster_negatives and not self.train_negatives:
            raise ValueError(f"--b3-cluster-negatives {self.b3_cluster_negatives} needs --train-negatives N (how many "
                             "of them each query trains with); without it they are mined and never used")
        if self.b3_cluster_negatives and self.negatives_file:
            raise ValueError("--b3-cluster-negatives replaces the hard negatives of --negatives: give one of them")
        if self.b3_cluster_negatives and self.distill is not None:
            raise ValueError("--b3-cluster-negatives is not used when distilling (the teacher-scored passages are "
                             "the negatives)")
        if self.b3_clusters_per_batch is not None and self.batch_size != self.b3_clusters_per_batch * self.b3_cluster_size:
            raise ValueError(f"--b3-clusters-per-batch {self.b3_clusters_per_batch} x --b3-cluster-size "
                             f"{self.b3_cluster_size} must equal --batch-size {self.batch_size}")
        if self.b3_clusters_per_batch is not None and not self.b3_exact_k:
            raise ValueError("--b3-clusters-per-batch needs --b3-exact-k (whole clusters of exactly K)")
        from .config_ranges import check_ranges  # issue 18: every numeric option in range, named by its flag

        check_ranges(self)

    def lora_settings(self):
        """The LoRA settings (``ValueError`` for a value out of range); ``None`` without ``lora_r``."""
        if not self.lora_r:
            return None
        from ..modeling.lora import LoraSettings

        targets = self.lora_target_modules
        if isinstance(targets, str):  # a config file's "q_proj,v_proj"
            targets = [t for t in targets.replace(",", " ").split() if t]
        dropout = 0.1 if self.lora_dropout is None else self.lora_dropout
        return LoraSettings(self.lora_r, self.lora_alpha, dropout, list(targets))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> "TrainConfig":
        """Read YAML or JSON (``config_file.py``): an unknown key or a value of the wrong type is a ``DataError``
        naming the file, line and field."""
        from retr.retriever.data.errors import DataError

        path = Path(path)
        if not path.exists():
            raise DataError(path, None, "config file not found")
        from .config_file import check_values, read_config_mapping  # issue 18: BOM, types, line numbers

        raw, text = read_config_mapping(path)
        raw = check_values(cls, raw, path, text, lenient_str=frozenset({"lora_target_modules"}))
        raw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**raw)

"""Range checks of ``TrainConfig``'s numeric fields (issue 18): a value out of range is one ``ValueError`` line
naming the flag (``--logging-steps must be at least 1, got 0``), raised when the config is built, before any
model or data is loaded. Before these checks ``--logging-steps 0`` ended in a ZeroDivisionError traceback,
``--gc-query-chunk 0`` in "range() arg 3 must not be zero", ``--save-steps -1`` saved every step and
``--deletion-prob 1.5`` / ``--momentum 2`` / ``--ratio-min`` above ``--ratio-max`` trained silently.
Own code: a table of bounds (the dataclass has no validator library behind it). Memory: constant."""
from __future__ import annotations

import math
from typing import Any

# field -> least value (None in the config = the default/off, always allowed)
AT_LEAST = {"logging_steps": 1, "gc_query_chunk": 1, "gc_passage_chunk": 1, "chunk_length": 1,
            "query_max_length": 1, "passage_max_length": 1, "b3_m": 1, "b3_cluster_size": 1,
            "save_steps": 0, "save_total_limit": 0, "eval_steps": 0, "max_steps": 0, "warmup_steps": 0,
            "train_negatives": 0, "train_random_negatives": 0, "queue_size": 0, "seed": 0, "b3_p": 0}
# finite floats >= 0 (max_grad_norm 0 = no clipping; lr 0 freezes the weights, which tests rely on)
NON_NEGATIVE = ("weight_decay", "max_grad_norm", "lr", "head_lr")
POSITIVE: tuple[str, ...] = ()  # finite floats > 0
UNIT = {"warmup_ratio": "[0, 1]", "momentum": "[0, 1]", "deletion_prob": "[0, 1)", "ratio_min": "(0, 1]",
        "ratio_max": "(0, 1]"}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_ranges(cfg: Any) -> None:
    """``ValueError`` naming the flag for the first numeric field of ``cfg`` out of its range (see the tables)."""
    for name, least in AT_LEAST.items():
        value = getattr(cfg, name)
        if value is not None and value < least:
            raise ValueError(f"{_flag(name)} must be at least {least}, got {value}")
    for name in NON_NEGATIVE + POSITIVE:
        value = getattr(cfg, name)
        if value is None:
            continue
        if not math.isfinite(value) or value < 0 or (name in POSITIVE and value == 0):
            raise ValueError(f"{_flag(name)} must be {'> 0' if name in POSITIVE else '>= 0'}, got {value}")
    for name, interval in UNIT.items():
        value = getattr(cfg, name)
        low_ok = value > 0 if interval[0] == "(" else value >= 0
        high_ok = value < 1 if interval[-1] == ")" else value <= 1
        if not (math.isfinite(value) and low_ok and high_ok):
            raise ValueError(f"{_flag(name)} must be in {interval}, got {value}")
    if cfg.ratio_min > cfg.ratio_max:
        raise ValueError(f"--ratio-min {cfg.ratio_min} is above --ratio-max {cfg.ratio_max}")

"""What ``retr train --resume`` checks before it loads a checkpoint: that the run asked for is the one saved (its
settings, the model it started from), so the resumed run ends with the weights of an uninterrupted one rather than
silently mixing two runs (a new ``--lr`` ignored by the checkpoint's schedule, another base model under a LoRA
adapter)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .arguments import TrainConfig

# settings a resumed run may change: where things are and what is logged, saved or evaluated, and GradCache's
# chunking (exact: the same gradients in other memory); everything else shapes the weights a run ends with
RESUME_MAY_CHANGE = frozenset({
    "output_dir", "resume", "model", "train_data", "negatives_file", "teacher_scores", "b3_teacher", "b3_cache",
    "token_cache", "save_steps", "save_total_limit", "logging_steps", "eval_steps", "eval_data", "eval_split",
    "report_to", "merge_lora", "grad_cache", "gc_query_chunk", "gc_passage_chunk", "gradient_checkpointing",
    # the model's own settings, given or taken from the model: compared as resolved by start_model_digest
    "pooling", "normalize", "query_prefix", "passage_prefix", "query_max_length", "passage_max_length",
    "query_instruction", "task", "torch_dtype"})


def check_same_settings(path: Path, saved: dict[str, Any], config: TrainConfig, advice: str = "") -> None:
    """``ValueError`` (one line) when ``--resume`` asks for other training settings than the checkpoint at ``path``
    was trained with (``saved``: its ``TrainConfig.to_json()``): the checkpoint's optimizer and learning-rate
    schedule would win silently (a new ``--lr`` ignored) or the run would end unlike an uninterrupted one.
    Paths, logging, saving, evaluation and GradCache chunking may change (``RESUME_MAY_CHANGE``)."""
    now = config.to_json()
    changed = [k for k in sorted(saved) if k in now and k not in RESUME_MAY_CHANGE and saved[k] != now[k]]
    if saved.get("max_steps") and now.get("max_steps") and "epochs" in changed:
        changed.remove("epochs")  # --max-steps overrides --epochs
    if changed:
        what = ", ".join(f"{k} {_shown(saved[k])} -> {_shown(now[k])}" for k in changed[:3])
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        raise ValueError(f"{path}: --resume continues a run with its own settings, but this one changes {what}"
                         f"{more}{advice}")


def start_model_digest(model: nn.Module) -> str:
    """A cheap digest of the model a run starts from, for ``--resume``: its settings (``describe()``: pooling,
    normalisation, prefixes, max lengths, towers) and every parameter's name, shape, dtype and first and last 16
    values. LoRA adapters are left out (they start random, and ``lora_r`` is compared as a setting). Memory and
    time: 32 values per parameter."""
    h = hashlib.sha256()
    describe = getattr(model, "describe", None)
    if callable(describe):
        h.update(json.dumps({k: v for k, v in describe().items() if k != "model"}, sort_keys=True,
                            default=str).encode())
    for name, p in sorted(model.state_dict().items()):
        if "lora_" in name:
            continue
        h.update(f"{name}{tuple(p.shape)}{p.dtype}".encode())
        flat = p.detach().reshape(-1)
        if flat.numel() and flat.is_floating_point():
            h.update(torch.cat([flat[:16], flat[-16:]]).float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def is_adapter_checkpoint(path: Path) -> bool:
    """Whether a checkpoint's ``model/`` is a LoRA adapter (not a model ``-m`` can start a run from)."""
    from ..modeling.lora import is_adapter_dir

    return is_adapter_dir(path / "model")


def _shown(value: Any) -> str:
    return "(unset)" if value is None else str(value)

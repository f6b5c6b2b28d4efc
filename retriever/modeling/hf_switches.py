"""Hugging Face model switches that retr exposes as options: activation (gradient) checkpointing and the dtype
the weights are loaded in."""
from __future__ import annotations

import warnings

import torch
from torch import nn

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def parse_torch_dtype(name: str | None) -> "torch.dtype | str | None":
    """The dtype to load weights in: ``None`` -> ``None`` (transformers' default), ``auto`` -> ``"auto"`` (the
    dtype the checkpoint was saved in), ``fp32`` / ``fp16`` / ``bf16`` (or the torch names) -> the
    ``torch.dtype``. ``ValueError`` (one line) for any other name."""
    if name is None:
        return None
    if name == "auto":
        return "auto"
    key = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "half": "fp16"}.get(name, name)
    if key not in TORCH_DTYPES:
        raise ValueError(f"--torch-dtype must be auto, fp32, fp16 or bf16, got {name!r}")
    return TORCH_DTYPES[key]


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Turn on the Hugging Face activation (gradient) checkpointing switch of ``model`` (a ``PreTrainedModel``),
    non-reentrant and with ``preserve_rng_state=True`` (``torch.utils.checkpoint``'s default, passed explicitly):
    each checkpointed block stashes the CPU and device RNG state when it runs forward and restores it when the
    backward recomputes it, so dropout inside the block draws the same masks twice. Under GradCache the second
    (gradient) forward of a chunk replays the first forward's RNG (``RandContext``), the blocks stash that replayed
    state, and their recomputation replays it again: the gradients equal a step without checkpointing.

    Memory: the activations of one layer boundary per block instead of every intermediate, for about one more
    forward of compute. Only active in training mode with gradients enabled (the no-grad first GradCache pass
    runs the blocks plainly). ``ValueError`` (one line) for a model without the switch."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(f"{type(model).__name__} does not support --gradient-checkpointing")
    kwargs = {"use_reentrant": False, "preserve_rng_state": True}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name; the old one warns
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if getattr(getattr(model, "config", None), "use_cache", None):
        model.config.use_cache = False  # a KV cache is of no use to an encoder and conflicts with checkpointing


def gradient_checkpointing_on(model: nn.Module) -> bool:
    """Whether any block of ``model`` has checkpointing switched on."""
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())

"""LoRA adapters (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") through Hugging Face
``peft``, for dual-encoder towers and cross-encoders alike.

Training (``--lora-r``): the Hugging Face model inside each tower (``Encoder.model``, ``CrossEncoder.model``) is
wrapped by ``peft.get_peft_model``: the base weights are frozen and every targeted linear layer ``W`` gets
``W + (alpha / r) * B A`` with ``A`` [r, in] and ``B`` [out, r] trainable (``B`` starts at zero, so step 0 is the
base model). A cross-encoder's scoring head is trained fully (PEFT's ``SEQ_CLS`` task keeps it in
``modules_to_save``). LoRA dropout is an ``nn.Dropout`` on the adapter's input, drawn from torch's RNG, so
GradCache's ``RandContext`` and activation checkpointing replay it like any other dropout.

Saving: a tower with an adapter saves in PEFT's own format, ``adapter_config.json`` + ``adapter_model.safetensors``
(only the adapter's weights; ``base_model_name_or_path`` names the base model directory), beside retr's and
sentence-transformers' settings and the tokenizer. ``PeftModel.from_pretrained(base, directory)`` loads it.
``save_merged`` writes the base model with the adapter folded in (``merge_and_unload``): a plain Hugging Face
directory that needs no ``peft``.

Loading: ``safe_load.hf_load`` and ``check_model_dir`` recognise an adapter directory (``adapter_config.json``
and no ``config.json``), load the base model it names (a local directory, also relative to the adapter's
directory, or a hub id) with the same loader and then the adapter, so ``retr index/eval/search/rerank`` and
``--resume`` take a LoRA run's ``model/`` like any other.

Memory: the frozen base model once, plus per adapted layer ``r * (in + out)`` parameters and their AdamW
moments; loading an adapter holds the base model and the adapter; ``save_merged`` loads one more copy of the
model (base + adapter) while the trained one is still in memory.

Why ``peft`` and not retr's own low-rank layers: the saved adapter must load in the ecosystem (PEFT,
transformers, sentence-transformers) and merge exactly; PEFT is the reference implementation of that format.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MERGED_DIR = "model-merged"  # beside a run's model/ when --merge-lora


@dataclass
class LoraSettings:
    """``r``: rank (>= 1); ``alpha``: scale numerator (the update is ``alpha / r * B A``; default ``2 r``);
    ``dropout``: dropout on the adapter's input; ``target_modules``: names (suffixes) of the linear layers to
    adapt, or ``["all-linear"]``; empty = PEFT's default for the architecture (BERT: query, value; Qwen2 /
    Llama: q_proj, v_proj). ``ValueError`` (one line) for a value out of range."""

    r: int
    alpha: float | None = None
    dropout: float = 0.1
    target_modules: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"--lora-r must be at least 1, got {self.r}")
        if self.alpha is not None and self.alpha <= 0:
            raise ValueError(f"--lora-alpha must be more than 0, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"--lora-dropout must be in [0, 1), got {self.dropout}")


def _peft() -> Any:
    try:
        import peft
    except ModuleNotFoundError:
        raise ModuleNotFoundError("LoRA needs the peft package: pip install 'retr[lora]' (or pip install peft)") from None
    return peft


def is_peft_model(model: nn.Module) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def base_hf_model(model: nn.Module) -> nn.Module:
    """The Hugging Face model under a PEFT wrapper (``model`` itself when it has none)."""
    return model.get_base_model() if is_peft_model(model) else model


def holders(model: nn.Module) -> list[nn.Module]:
    """The retr modules that hold a Hugging Face model as ``.model``: a dual encoder's towers (one when shared),
    a cross-encoder itself."""
    if hasattr(model, "query_encoder"):
        return [model.query_encoder] + ([] if model.shared else [model.passage_encoder])
    return [model]


def is_adapter_dir(path: str | os.PathLike) -> bool:
    """A PEFT adapter directory: ``adapter_config.json`` and no ``config.json`` of a full model."""
    path = Path(path)
    return path.is_dir() and (path / ADAPTER_CONFIG).exists() and not (path / "config.json").exists()


def adapter_base(path: str | os.PathLike) -> str:
    """The base model an adapter directory names, checked: the adapter's files complete, the base found (an
    existing directory as written, else relative to the adapter directory, else a hub id / retr alias).
    ``ModelLoadError`` (one line naming the file) otherwise."""
    from retr.indexing.atomic import read_json
    from retr.indexing.validate import check_fields, check_safetensors

    from .resolve import resolve_model_path
    from .safe_load import ModelLoadError

    path = Path(path)
    cfg = check_fields(read_json(path / ADAPTER_CONFIG), {"base_model_name_or_path": "string",
                                                          "peft_type": "string"},
                       str(path / ADAPTER_CONFIG), required=("base_model_name_or_path",))
    if not (path / ADAPTER_WEIGHTS).exists():
        raise ModelLoadError(f"{path}: LoRA adapter without weights ({ADAPTER_WEIGHTS} is missing)")
    check_safetensors(path / ADAPTER_WEIGHTS)
    base = cfg["base_model_name_or_path"]
    if not base:
        raise ModelLoadError(f"{path / ADAPTER_CONFIG}: no base model (base_model_name_or_path is empty)")
    if Path(base).expanduser().is_dir():
        return str(Path(base).expanduser())
    if not Path(base).is_absolute() and (path / base).is_dir():
        return str((path / base).resolve())
    try:
        return resolve_model_path(base)
    except (FileNotFoundError, ModuleNotFoundError) as e:
        raise ModelLoadError(f"{path / ADAPTER_CONFIG}: base_model_name_or_path {base!r} not found ({e})") from None


def load_with_adapter(loader: Any, path: str | os.PathLike, what: str, **kwargs: Any) -> Any:
    """``loader(base, ...)`` (``AutoModel.from_pretrained`` or a task class) then the adapter of ``path`` on it,
    frozen (inference; ``--resume`` copies its weights into the trainable model). ``output_loading_info=True``
    is passed through: (model, info)."""
    from .safe_load import ModelLoadError, hf_load

    peft = _peft()
    base = hf_load(loader, adapter_base(path), what, **kwargs)
    info = None
    if isinstance(base, tuple):
        base, info = base
    try:
        with _quiet():
            model = peft.PeftModel.from_pretrained(base, str(path), is_trainable=False)
    except Exception as e:  # a shape mismatch (another base model), a bad config value
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        first = next((ln for ln in lines if "size mismatch" in ln), lines[0] if lines else type(e).__name__)
        raise ModelLoadError(f"{path}: cannot load the LoRA adapter ({first[:240]})") from None
    _check_adapter_keys(model, path)
    model.eval()
    return (model, info) if info is not None else model


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    with torch.random.fork_rng(devices=[]), _quiet():
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """peft asks transformers 5 for the deprecated ``is_gradient_checkpointing`` (a FutureWarning per load)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def add_lora(model: nn.Module, settings: LoraSettings, seed: int = 0) -> None:
    """Wrap the Hugging Face model of every tower of ``model`` (``DualEncoder`` or ``CrossEncoder``) with a fresh
    LoRA adapter, in place: base weights frozen, adapters trainable, initialised from ``seed`` (the same adapter on
    every rank and in every re-run; the caller's RNG is left as it was). A cross-encoder's ``fresh_parameters``
    are renamed to the wrapped head's trainable copy. ``ValueError`` (one line) when a tower already has an
    adapter or no module matches the targets."""
    peft = _peft()
    for i, holder in enumerate(holders(model)):
        hf = holder.model
        if is_peft_model(hf):
            raise ValueError("--model already holds a LoRA adapter: train its merged model (--merge-lora) instead")
        cross = not hasattr(holder, "encode")  # a cross-encoder scores pairs; an Encoder embeds texts
        task = peft.TaskType.SEQ_CLS if cross else peft.TaskType.FEATURE_EXTRACTION
        config = peft.LoraConfig(task_type=task, r=settings.r,
                                 lora_alpha=settings.alpha if settings.alpha is not None else 2 * settings.r,
                                 lora_dropout=settings.dropout,
                                 target_modules=_targets(settings.target_modules))
        base_name = str(getattr(hf.config, "_name_or_path", "") or "")
        try:
            with _seeded(seed + i):
                wrapped = peft.get_peft_model(hf, config)
        except ValueError as e:  # no target module found / none given for an unknown architecture
            raise ValueError(f"--lora-target-modules: {str(e).splitlines()[0][:200]}") from None
        unknown = _unmatched_targets(hf, settings.target_modules)
        if unknown:  # peft adapts the names that match and ignores the rest: refuse a typo instead
            raise ValueError(f"--lora-target-modules: {', '.join(unknown)} match no module of the model")
        if base_name:
            wrapped.peft_config["default"].base_model_name_or_path = str(Path(base_name).resolve()) \
                if Path(base_name).is_dir() else base_name
        holder.model = wrapped
        fresh = set(getattr(holder, "fresh_parameters", ()))
        if fresh:
            holder.fresh_parameters = tuple(n for n, p in holder.named_parameters()
                                            if p.requires_grad and _unwrapped_name(n) in fresh)


def _unmatched_targets(model: nn.Module, names: list[str]) -> list[str]:
    """Requested target names (module-name suffixes, as peft matches them) that no module of ``model`` has."""
    if not names or names == ["all-linear"]:
        return []
    modules = [n for n, _ in model.named_modules()]
    return [t for t in names if not any(n == t or n.endswith("." + t) for n in modules)]


def _check_adapter_keys(model: nn.Module, path: str | os.PathLike) -> None:
    """The adapter file must hold exactly the LoRA tensors its config makes (peft silently leaves missing ones at
    their initial values and ignores extra ones): ``ModelLoadError`` naming what differs."""
    from safetensors import safe_open

    from .safe_load import ModelLoadError

    with safe_open(str(Path(path) / ADAPTER_WEIGHTS), framework="pt") as fh:
        stored = {k for k in fh.keys() if ".lora_" in k}
    made = {n.replace(".default", "") for n, _ in model.named_parameters() if ".lora_" in n}
    missing, extra = sorted(made - stored), sorted(stored - made)
    if missing or extra:
        what = f"{len(missing)} adapter tensors missing (e.g. {missing[0]})" if missing else \
            f"{len(extra)} unexpected tensors (e.g. {extra[0]})"
        raise ModelLoadError(f"{path}/{ADAPTER_WEIGHTS}: does not match adapter_config.json: {what}")


def _targets(names: list[str]) -> Any:
    if not names:
        return None  # PEFT's per-architecture default
    if names == ["all-linear"]:
        return "all-linear"
    return list(names)


def _unwrapped_name(name: str) -> str:
    """``model.base_model.model.classifier.modules_to_save.default.weight`` -> ``model.classifier.weight``."""
    return (name.replace("base_model.model.", "", 1).replace(".modules_to_save.default", "")
            .replace(".base_layer", ""))


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """{"trainable": parameters with ``requires_grad``, "total": all parameters} of ``model``."""
    total = trainable = 0
    for p in model.parameters():
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return {"trainable": trainable, "total": total}


def has_lora(model: nn.Module) -> bool:
    return any(is_peft_model(h.model) for h in holders(model))


def save_merged(model_dir: str | os.PathLike, output: str | os.PathLike, model_class: Any) -> None:
    """Load the run's ``model_dir`` (base + adapter, with ``model_class.from_pretrained``), fold each adapter into
    its base weights (``merge_and_unload``) and save the result to ``output``: a plain Hugging Face directory
    (with retr's and sentence-transformers' settings) that loads without ``peft``."""
    model = model_class.from_pretrained(model_dir)
    for holder in holders(model):
        if is_peft_model(holder.model):
            holder.model = holder.model.merge_and_unload()
    model.save(output)

"""``Encoder``: a Hugging Face encoder + pooling + optional L2 normalisation, the one forward that both
training and search run, so what is evaluated is what was trained.

Settings (pooling, normalisation, max lengths, prompts) are read from a sentence-transformers directory
when present (``modules.json``, ``1_Pooling/config.json``, ``sentence_bert_config.json``,
``config_sentence_transformers.json``) or from retr's own ``retr_encoder.json``; ``save`` writes all of
them, so a saved encoder loads in transformers (``AutoModel``), sentence-transformers and retr alike.

``encode`` tokenizes the texts of one call at once (fast tokenizer), sorts them by *token* length so each batch
pads to nearly nothing, runs under ``torch.inference_mode`` (fp16 autocast on CUDA) and returns float32 numpy;
its memory grows with the call, so corpora go through ``retr.retriever.encoding`` in blocks. Max lengths above
the model's positions are clamped with a warning.
"""
from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from .resolve import resolve_model_path

log = logging.getLogger(__name__)

RETR_CONFIG = "retr_encoder.json"
POOLINGS = ("mean", "cls", "last")
ENCODE_BLOCK = 8192  # texts tokenised per call inside ``Encoder.encode``


@dataclass
class EncoderConfig:
    """How texts become vectors. ``None`` lengths resolve to the model's sentence-transformers
    ``max_seq_length`` (else the tokenizer's limit, at most 512)."""

    pooling: str = "mean"
    normalize: bool = True
    query_prefix: str = ""
    passage_prefix: str = ""
    query_max_length: int | None = None
    passage_max_length: int | None = None
    title_sep: str = " "
    # Matryoshka (Kusupati et al. 2022, MRL): keep the first ``truncate_dim`` components of the pooled vector
    # (then L2-normalise when ``normalize``); None = the model's full hidden size
    truncate_dim: int | None = None
    # retr makes the tokenizer end sequences with its EOS token (decoder embedders, ``decoder.ensure_eos``);
    # None = on for ``last`` pooling when the tokenizer has an EOS token it does not already append, else off
    append_eos: bool | None = None

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if self.truncate_dim is not None and self.truncate_dim < 1:
            raise ValueError(f"--dim must be at least 1, got {self.truncate_dim}")

    def settings(self) -> dict[str, Any]:
        """The settings as a dict, without the options added after fingerprints existed when they are at their
        defaults: a model that does not use them keeps the fingerprint (and index/cache keys) it always had."""
        out = asdict(self)
        for name, unused in _LATER_DEFAULTS.items():
            if out.get(name) in unused:
                out.pop(name)
        return out


# settings added after the first fingerprints, with the values that mean "not used" (None = not resolved yet)
_LATER_DEFAULTS: dict[str, tuple[Any, ...]] = {"truncate_dim": (None,), "append_eos": (None, False)}


def read_encoder_config(model_dir: Path) -> dict[str, Any]:
    """Settings stored beside a model (retr's own file first, then sentence-transformers' files)."""
    out: dict[str, Any] = {}
    st_cfg = model_dir / "sentence_bert_config.json"
    if st_cfg.exists():
        length = json.loads(st_cfg.read_text()).get("max_seq_length")
        if length:
            out["query_max_length"] = out["passage_max_length"] = int(length)
    pool_cfg = model_dir / "1_Pooling" / "config.json"
    if pool_cfg.exists():
        p = json.loads(pool_cfg.read_text())
        if p.get("pooling_mode_cls_token"):
            out["pooling"] = "cls"
        elif p.get("pooling_mode_lasttoken"):
            out["pooling"] = "last"
        elif p.get("pooling_mode_mean_tokens"):
            out["pooling"] = "mean"
    modules = model_dir / "modules.json"
    if modules.exists():
        types = [m.get("type", "") for m in json.loads(modules.read_text())]
        out["normalize"] = any(t.endswith("Normalize") for t in types)
    prompts_cfg = model_dir / "config_sentence_transformers.json"
    if prompts_cfg.exists():
        prompts = json.loads(prompts_cfg.read_text()).get("prompts") or {}
        if prompts.get("query"):
            out["query_prefix"] = prompts["query"]
        for key in ("document", "passage", "corpus"):
            if prompts.get(key):
                out["passage_prefix"] = prompts[key]
                break
    own = model_dir / RETR_CONFIG
    if own.exists():
        out.update({k: v for k, v in json.loads(own.read_text()).items() if k in {f.name for f in fields(EncoderConfig)}})
    return out


def position_limit(model: nn.Module, tokenizer: Any) -> int:
    """Most tokens the model can take: its position embeddings, and the tokenizer's limit when that is set
    (RoBERTa has 514 positions for 512 tokens; an unset tokenizer limit is a huge sentinel)."""
    positions = int(getattr(model.config, "max_position_embeddings", 0) or 0) or 10**9
    tok_limit = int(getattr(tokenizer, "model_max_length", 0) or 0)
    if 0 < tok_limit < 10**8:
        positions = min(positions, tok_limit)
    return positions if positions < 10**9 else 512


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """[B, L, H] hidden states, [B, L] attention mask -> [B, H]: ``mean`` over the real tokens, ``cls`` (the first
    position) or ``last`` (the last position whose mask is 1: right and left padding alike)."""
    if how == "cls":
        return hidden[:, 0]
    if how == "last":
        last = mask.size(1) - 1 - mask.flip(1).long().argmax(1)
        return hidden[torch.arange(hidden.size(0), device=hidden.device), last]
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


class Encoder(nn.Module):
    """One tower: ``encode(texts) -> np.ndarray`` for search, ``forward(**batch) -> Tensor`` for training."""

    def __init__(self, model: nn.Module, tokenizer: Any, config: EncoderConfig | None = None, name: str = ""):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or EncoderConfig()
        self.name = name or getattr(model.config, "_name_or_path", "") or "model"
        self.train(model.training)
        from .lora import base_hf_model  # a PEFT wrapper's forward passes position_ids on in **kwargs

        self._takes_position_ids = "position_ids" in inspect.signature(base_hf_model(model).forward).parameters
        self.precision = "auto"  # inference autocast: auto (fp16 on CUDA, fp32 on CPU) | fp32 | fp16 | bf16
        self.runner: Any = None  # issue 22: an ONNX Runtime / OpenVINO runner (retriever/backends.py); None = torch
        self.source_dir: Path | None = None  # the directory it was loaded from (an export's graph is found there)
        positions = position_limit(model, tokenizer)
        default = min(positions, 512)
        for side in ("query_max_length", "passage_max_length"):
            value = getattr(self.config, side)
            if value is None:
                setattr(self.config, side, default)
            elif value < 1:
                raise ValueError(f"{side.replace('_', '-')} must be at least 1, got {value}")
            elif value > positions:
                log.warning("--%s %d is more than the model's %d positions; using %d", side.replace("_", "-"), value,
                            positions, positions)
                setattr(self.config, side, positions)
        from .decoder import ends_with_eos, ensure_eos

        eos = getattr(tokenizer, "eos_token_id", None)
        if eos is not None and getattr(tokenizer, "pad_token_id", 0) is None:
            tokenizer.pad_token = tokenizer.eos_token  # decoders: pad with EOS (the attention mask tells them apart)
        if self.config.append_eos is None:  # retr appends EOS for last-token pooling if the tokenizer does not
            self.config.append_eos = self.config.pooling == "last" and eos is not None and not ends_with_eos(tokenizer)
        if self.config.append_eos:
            ensure_eos(tokenizer)
        hidden = self.hidden_size
        if self.config.truncate_dim is not None and self.config.truncate_dim > hidden:
            raise ValueError(f"--dim {self.config.truncate_dim} is more than the model's {hidden} dimensions")

    # ---------- loading / saving ----------
    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **overrides: Any) -> "Encoder":
        """Load from a local directory, a hub id, or the alias ``minilm`` (the packaged all-MiniLM-L6-v2).
        ``overrides`` (pooling, normalize, prefixes, max lengths) win over the stored settings; ``torch_dtype``
        (auto | fp32 | fp16 | bf16) is the dtype the weights are loaded in (bf16 halves the memory of a big
        decoder)."""
        from transformers import AutoModel, AutoTokenizer

        from .hf_switches import parse_torch_dtype

        dtype = parse_torch_dtype(overrides.pop("torch_dtype", None))
        path = resolve_model_path(str(name_or_path))
        stored = read_encoder_config(Path(path)) if Path(path).is_dir() else {}
        from .lora import adapter_base, is_adapter_dir

        if is_adapter_dir(path) and not (Path(path) / RETR_CONFIG).exists():  # a foreign adapter: base's settings
            base = adapter_base(path)
            stored = {**(read_encoder_config(Path(base)) if Path(base).is_dir() else {}), **stored}
        stored.update({k: v for k, v in overrides.items() if v is not None})
        config = EncoderConfig(**stored)
        from .safe_load import check_model_dir, hf_load

        check_model_dir(path)  # one line for a damaged directory; no code from it ever runs (safe_load)
        tokenizer = hf_load(AutoTokenizer.from_pretrained, path, "tokenizer")
        model = hf_load(AutoModel.from_pretrained, path, "model", **_dtype_kwargs(dtype))
        model.eval()
        encoder = cls(model, tokenizer, config, name=str(name_or_path))
        encoder.source_dir = Path(path) if Path(path).is_dir() else None
        return encoder

    def save(self, directory: str | os.PathLike) -> None:
        """Write an HF model directory that AutoModel, SentenceTransformer and retr all load."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(directory, safe_serialization=True)
        self.tokenizer.save_pretrained(directory)
        c = self.config
        dim = self.hidden_size  # sentence-transformers' Pooling sees the full vector (truncation is retr's setting)
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        ]
        if c.normalize:
            modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
            (directory / "2_Normalize").mkdir(exist_ok=True)
        (directory / "modules.json").write_text(json.dumps(modules, indent=2))
        (directory / "1_Pooling").mkdir(exist_ok=True)
        (directory / "1_Pooling" / "config.json").write_text(json.dumps({
            "word_embedding_dimension": dim,
            "pooling_mode_cls_token": c.pooling == "cls",
            "pooling_mode_mean_tokens": c.pooling == "mean",
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": c.pooling == "last",
            "include_prompt": True,
        }, indent=2))
        # sentence-transformers has one max_seq_length; queries use the same unless retr's config says otherwise
        (directory / "sentence_bert_config.json").write_text(json.dumps(
            {"max_seq_length": int(c.passage_max_length), "do_lower_case": False}, indent=2))
        prompts = {}
        if c.query_prefix:
            prompts["query"] = c.query_prefix
        if c.passage_prefix:
            prompts["document"] = c.passage_prefix
        (directory / "config_sentence_transformers.json").write_text(json.dumps(
            {"prompts": prompts, "default_prompt_name": None, "similarity_fn_name": "cosine" if c.normalize else "dot"},
            indent=2))
        (directory / RETR_CONFIG).write_text(json.dumps(c.settings(), indent=2))

    # ---------- identity ----------
    @property
    def hidden_size(self) -> int:
        """The model's hidden size (the pooled vector's length before any truncation)."""
        return int(self.model.config.hidden_size)

    @property
    def dim(self) -> int:
        """Length of the vectors this encoder returns: ``truncate_dim`` when set, else the hidden size."""
        return int(self.config.truncate_dim or self.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def fingerprint(self, side: str | None = None) -> str:
        """sha256 over parameter bytes and settings: changes whenever the weights or settings do.

        ``side="passage"`` leaves out the query-only settings (prefix, max length), so what made a passage vector
        has one fingerprint whatever the query settings; ``None`` covers every setting."""
        settings = self.config.settings()
        if side == "passage":
            settings = {k: v for k, v in settings.items() if not k.startswith("query_")}
        h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
        for name, p in sorted(self.model.state_dict().items()):
            h.update(name.encode())
            h.update(p.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes()
                     if p.dtype != torch.bool else p.cpu().numpy().tobytes())
        return h.hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        """The settings that must agree between the model that built an index and the one that queries it
        (``torch_dtype`` only when the weights are not float32)."""
        out = {"model": self.name, "dim": self.dim, **self.config.settings()}
        dtype = next(self.model.parameters()).dtype
        if dtype != torch.float32:
            out["torch_dtype"] = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))
        return out

    # ---------- forward ----------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """[B, L] ids and mask (right or left padded) -> [B, dim] embeddings."""
        if "position_ids" not in kwargs and self._takes_position_ids:
            from .decoder import padded_position_ids

            positions = padded_position_ids(attention_mask)
            if positions is not None:  # left padding: count positions from each row's first real token
                kwargs["position_ids"] = positions
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        emb = pool(out.last_hidden_state, attention_mask, self.config.pooling)
        if self.config.truncate_dim is not None:
            emb = emb[:, : self.config.truncate_dim]
        if self.config.normalize:
            emb = nn.functional.normalize(emb, p=2, dim=-1)
        return emb

    def tokenize(self, texts: Sequence[str], is_query: bool, padding: bool | str = True) -> dict[str, torch.Tensor]:
        """Prefix, truncate and pad a list of texts into model inputs (used by training collators)."""
        prefix = self.config.query_prefix if is_query else self.config.passage_prefix
        max_len = self.config.query_max_length if is_query else self.config.passage_max_length
        texts = [prefix + t for t in texts] if prefix else list(texts)
        return self.tokenizer(texts, padding=padding, truncation=True, max_length=max_len, return_tensors="pt")

    # ---------- inference ----------
    def encode(self, texts: Sequence[str], is_query: bool = False, batch_size: int = 64,
               show_progress: bool = False, desc: str | None = None, block_size: int = ENCODE_BLOCK) -> np.ndarray:
        """Embed texts as float32 [n, dim], in input order.

        Texts are tokenised ``block_size`` at a time and sorted by token length inside each block, so memory
        holds one block of tokens (~200 bytes per token) besides the [n, dim] output."""
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        prefix = self.config.query_prefix if is_query else self.config.passage_prefix
        max_len = self.config.query_max_length if is_query else self.config.passage_max_length
        pad_id = self.tokenizer.pad_token_id or 0
        device = self.device
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        with inference(self, device, self.precision, len(texts), desc or ("queries" if is_query else "passages"),
                       show_progress, unit="text") as advance:
            for block_start in range(0, len(texts), block_size):
                block = texts[block_start:block_start + block_size]
                block = [prefix + t for t in block] if prefix else list(block)
                ids = self.tokenizer(block, truncation=True, max_length=max_len, padding=False,
                                     return_attention_mask=False, return_token_type_ids=False)["input_ids"]
                order = np.argsort([-len(x) for x in ids], kind="stable")
                batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
                if self.runner is not None:  # --backend onnx/openvino: all batches of the block at once
                    for rows, emb in zip(batches, self.runner.run_many([_pad(ids, r, pad_id) for r in batches])):
                        out[block_start + rows] = emb
                    advance(len(order))
                    continue
                for rows in batches:
                    input_ids, mask = _pad(ids, rows, pad_id)
                    emb = self(torch.from_numpy(input_ids).to(device), torch.from_numpy(mask).to(device))
                    out[block_start + rows] = emb.float().cpu().numpy()
                    advance(len(rows))
        return out


def _pad(ids: Sequence[Sequence[int]], rows: np.ndarray, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded [len(rows), longest] int64 ids and attention mask of token lists ``ids[rows]``."""
    width = max(len(ids[r]) for r in rows)
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for j, r in enumerate(rows):
        seq = ids[r]
        input_ids[j, : len(seq)] = seq
        mask[j, : len(seq)] = 1
    return input_ids, mask


def _dtype_kwargs(dtype: "torch.dtype | str | None") -> dict[str, Any]:
    """``from_pretrained``'s dtype argument: ``dtype`` since transformers 4.56, ``torch_dtype`` before."""
    if dtype is None:
        return {}
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype" if (major, minor) >= (4, 56) else "torch_dtype": dtype}


@contextlib.contextmanager
def inference(module: nn.Module, device: torch.device, precision: str, total: int, desc: str,
              show_progress: bool, unit: str = "text") -> Iterator[Callable[[int], None]]:
    """Eval mode + ``inference_mode`` + autocast + an optional progress bar; restores the training mode."""
    was_training = module.training
    module.eval()
    bar = None
    if show_progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=desc, unit=unit)
    try:
        with torch.inference_mode(), _autocast(device, precision):
            yield (bar.update if bar is not None else (lambda n: None))
    finally:
        if bar is not None:
            bar.close()
        module.train(was_training)


def _autocast(device: torch.device, precision: str) -> Any:
    if precision == "auto":
        precision = "fp16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return _null_ctx()
    if precision not in ("fp16", "bf16"):
        raise ValueError(f"precision must be auto, fp32, fp16 or bf16, got {precision!r}")
    return torch.autocast(device.type, dtype=torch.float16 if precision == "fp16" else torch.bfloat16)


class _null_ctx:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None

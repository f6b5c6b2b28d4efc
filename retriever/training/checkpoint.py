"""Checkpoints without pickle: model as a Hugging Face safetensors directory, every other tensor (optimizer
moments, task state such as the MoCo queue and key encoder, RNG states) in safetensors, scalars in JSON.
Each checkpoint directory is written atomically (temp dir, then rename), so the latest complete one is
always loadable and a killed run loses at most ``save_steps`` steps.

Each checkpoint carries ``manifest.json`` (size and xxh3-128 checksum of every file). ``--resume`` verifies a checkpoint
before loading anything from it, and when the newest one is damaged (truncated or missing file, changed
bytes) it warns and falls back to the previous intact one. Temp dirs of runs killed while saving
(``.step-N.tmp-*``) are removed at the next save, under the lock of the checkpoints directory."""
from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from retr.indexing import locks
from retr.indexing.atomic import ArtifactError, atomic_dir, read_json
from retr.indexing.validate import check_fields, check_safetensors, file_digest, verify_files

log = logging.getLogger(__name__)
STEP_DIR = re.compile(r"^step-(\d+)$")
MANIFEST = "manifest.json"
REQUIRED = ("model", "task.safetensors", "optimizer.safetensors", "rng.safetensors", "trainer_state.json")


def optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    for name, value in meta.get("scalars", {}).items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    groups = meta["param_groups"]
    for g in groups:
        if "betas" in g and isinstance(g["betas"], list):
            g["betas"] = tuple(g["betas"])
    opt.load_state_dict({"state": state, "param_groups": groups})


def rng_tensors() -> dict[str, torch.Tensor]:
    out = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"cuda{i}"] = s
    return out


def restore_rng(tensors: dict[str, torch.Tensor], rank: int = 0) -> None:
    """Restore this rank's RNG states: keys ``rank{r}.*`` (DDP ranks > 0), else the plain ones (rank 0; and
    checkpoints written before RNG states were kept per rank)."""
    prefix = f"rank{rank}."
    if rank and any(k.startswith(prefix) for k in tensors):
        tensors = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    else:
        tensors = {k: v for k, v in tensors.items() if not k.startswith("rank")}
    torch.set_rng_state(tensors["cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("cuda")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(root: Path, step: int, model, task: torch.nn.Module, optimizer, state: dict[str, Any],
                    keep: int = 2, rank_rngs: list[dict[str, torch.Tensor]] | None = None) -> Path:
    """``rank_rngs``: every rank's ``rng_tensors()`` (DDP: each rank draws its own dropout masks, so each needs its
    own RNG back on resume); rank 0's are stored under the plain keys, rank r's as ``rank{r}.*``."""
    final = root / f"step-{step}"
    root.mkdir(parents=True, exist_ok=True)
    with locks.output_lock(root):  # one lock for the whole checkpoints/ folder, not one file per step
        for stale in root.glob(".step-*.tmp-*"):  # left by a run killed while saving
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
        with atomic_dir(final, kind="checkpoint", lock=False) as tmp:
            model.save(tmp / "model")
            task_state = {k: v.detach().cpu().contiguous().clone() for k, v in task.state_dict().items()}
            save_file(task_state, str(tmp / "task.safetensors"))
            opt_tensors, opt_meta = optimizer_to_flat(optimizer)
            save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
            rngs = rank_rngs or [rng_tensors()]
            flat = dict(rngs[0])
            for r, states in enumerate(rngs[1:], 1):
                flat.update({f"rank{r}.{k}": v for k, v in states.items()})
            save_file({k: v.contiguous() for k, v in flat.items()}, str(tmp / "rng.safetensors"))
            (tmp / "trainer_state.json").write_text(json.dumps({**state, "optimizer": opt_meta}, indent=1))
            files = sorted(str(f.relative_to(tmp)) for f in tmp.rglob("*") if f.is_file())
            (tmp / MANIFEST).write_text(json.dumps({f: file_digest(tmp / f) for f in files}, indent=1))
        for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    log.info("checkpoint saved: %s", final)
    return final


def verify_checkpoint(path: Path) -> None:
    """Refuse (one line) a checkpoint that is incomplete or not byte-for-byte what was saved. Checkpoints
    without a manifest (older retr) get the structural checks: every safetensors file complete, JSON valid."""
    for name in REQUIRED:
        if not (path / name).exists():
            raise ArtifactError(f"{path}: incomplete checkpoint (missing {name})")
    if (path / MANIFEST).exists():
        manifest = read_json(path / MANIFEST)
        verify_files(path, manifest, full=list(manifest) if isinstance(manifest, dict) else (), record=MANIFEST)
    else:
        weights = sorted((path / "model").rglob("*.safetensors"))
        if not weights:
            raise ArtifactError(f"{path}: incomplete checkpoint (no model/*.safetensors)")
        for f in weights + [path / n for n in REQUIRED if n.endswith(".safetensors")]:
            check_safetensors(f)
    state = check_fields(read_json(path / "trainer_state.json"), {"global_step": "integer", "epoch": "integer",
                         "next_batch": "integer", "scheduler": "object", "optimizer": "object"},
                         str(path / "trainer_state.json"), required=("global_step", "scheduler", "optimizer"))
    check_fields(state["optimizer"], {"param_groups": "list", "scalars": "object"},
                 str(path / "trainer_state.json") + " (optimizer)", required=("param_groups",))


def load_latest_checkpoint(found: list[Path], model, task: torch.nn.Module, optimizer,
                           rank: int = 0) -> tuple[Path, dict[str, Any]]:
    """Load the newest intact checkpoint of ``found`` (oldest first); a damaged one is skipped with a warning.
    Every load overwrites the whole model/task/optimizer state, so a failed attempt leaves nothing behind."""
    errors = []
    for i in range(len(found) - 1, -1, -1):
        try:
            return found[i], load_checkpoint(found[i], model, task, optimizer, rank)
        except ArtifactError as e:
            errors.append(f"{found[i].name}: {e}")
            log.warning("checkpoint %s is damaged (%s); %s", found[i], e,
                        f"falling back to {found[i - 1].name}" if i else "no older checkpoint to fall back to")
    raise ArtifactError(f"{found[-1].parent}: no intact checkpoint to resume from ({'; '.join(errors)[:300]})")


def list_checkpoints(root: Path) -> list[Path]:
    if not root.exists():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def load_checkpoint(path: Path, model, task: torch.nn.Module, optimizer, rank: int = 0) -> dict[str, Any]:
    """Restore model, task, optimizer and this rank's RNG in place; return the trainer state (step, epoch, ...).
    The checkpoint is verified first (``verify_checkpoint``), so nothing is loaded from a damaged one."""
    verify_checkpoint(path)
    saved = type(model).from_pretrained(path / "model")
    model.load_state_dict(saved.state_dict())
    try:
        task_state = load_file(str(path / "task.safetensors"))
        opt_tensors = load_file(str(path / "optimizer.safetensors"))
        rng = load_file(str(path / "rng.safetensors"))
    except Exception as e:  # safetensors.SafetensorError: damaged in a way the header check did not see
        raise ArtifactError(f"{path}: cannot read checkpoint tensors ({str(e).splitlines()[0][:160]})") from None
    missing, unexpected = task.load_state_dict(task_state, strict=False)
    if unexpected:
        raise ArtifactError(f"{path}/task.safetensors: unexpected entries {unexpected[:3]} (different training mode?)")
    state = read_json(path / "trainer_state.json")
    optimizer_from_flat(optimizer, opt_tensors, state.pop("optimizer"))
    restore_rng(rng, rank)
    return state

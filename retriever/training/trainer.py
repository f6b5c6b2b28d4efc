"""The training loop: AdamW, linear warmup/decay, clipping, autocast (+ grad scaler for fp16 on CUDA), plain or
GradCache steps, DDP with representations gathered across ranks, atomic checkpoints and exact resume.

The trainer knows how to step; the task (``tasks.py``) knows what a step computes; the sampler which
examples form a batch; the collator how they become tensors.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from retr.indexing.atomic import atomic_dir, write_json_atomic

from ..modeling.dual_encoder import DualEncoder
from .arguments import TrainConfig
from .checkpoint import list_checkpoints, load_latest_checkpoint, save_checkpoint
from .resume_checks import check_same_settings, is_adapter_checkpoint, start_model_digest
from .distributed import (DistInfo, all_gather_objects, all_reduce_grads, barrier, gather_nograd, gather_with_grad,
                          seed_rank)
from .grad_cache import cached_step
from .samplers import BatchSampler, iterate, local_slice

log = logging.getLogger(__name__)


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) for k, v in batch.items()}


def linear_schedule(warmup: int, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))
    return f


def parameter_groups(model: nn.Module, task: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases and norms; ``config.head_lr`` for parameters the checkpoint did not
    hold (``model.fresh_parameters``, e.g. a cross-encoder's new scoring head or re-initialised pooler), which at
    the encoder's small learning rate stay near their random start for many steps. Fresh parameters get no weight
    decay (issue 20): decay would pull a head that starts at zero or at random back towards that start."""
    fresh = set(getattr(model, "fresh_parameters", ()))
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in list(model.named_parameters()) + [(f"task.{n}", p) for n, p in task.named_parameters()]:
        if p.requires_grad:
            no_decay = p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name or name in fresh
            groups.setdefault((bool(config.head_lr) and name in fresh, no_decay), []).append(p)
    return [{"params": params, "weight_decay": 0.0 if no_decay else config.weight_decay,
             "lr": config.head_lr if is_fresh else config.lr}
            for (is_fresh, no_decay), params in sorted(groups.items())]


class Trainer:
    def __init__(self, model: DualEncoder, task: nn.Module, collate: Callable[[list[int], int], dict[str, Any]],
                 sampler: BatchSampler, config: TrainConfig, dist: DistInfo | None = None,
                 eval_fn: Callable[[DualEncoder], dict[str, float]] | None = None):
        self.model, self.task, self.collate, self.sampler, self.config = model, task, collate, sampler, config
        self.dist = dist or DistInfo()
        self.device = self.dist.device
        self.eval_fn = eval_fn
        if config.batch_size % self.dist.world_size:
            raise ValueError(f"batch size {config.batch_size} does not split over {self.dist.world_size} ranks")
        model.to(self.device)
        task.to(self.device)
        self.ddp = None
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            # find_unused_parameters: HF encoders carry parameters a retrieval loss never touches (BERT's pooler),
            # and GradCache's last chunk may use one tower only
            self.ddp = DDP(model, device_ids=ids, broadcast_buffers=False, find_unused_parameters=True)
        self.optimizer = torch.optim.AdamW(parameter_groups(model, task, config), lr=config.lr)
        self.total_steps = config.max_steps or config.epochs * len(sampler)
        warmup = config.warmup_steps if config.warmup_steps is not None else int(config.warmup_ratio * self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, linear_schedule(warmup, self.total_steps))
        self.precision = config.precision
        if self.precision == "auto":
            self.precision = "fp16" if self.device.type == "cuda" else "fp32"
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" and self.device.type == "cuda" else None
        self.global_step, self.epoch, self.next_batch = 0, 0, 0
        self._extras: dict[str, torch.Tensor] = {}
        self.resumed_from: Path | None = None
        self.data_fingerprint = ""  # set by the driver: what the examples were
        self.output = Path(config.output_dir)
        self.start_model = start_model_digest(model)  # what --resume checks the base model against

    # ---------- one step ----------
    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype)

    def _forward(self, name: str, inputs: dict[str, torch.Tensor], grad: bool) -> torch.Tensor:
        module = self.ddp if (grad and self.ddp is not None) else self.model
        with self._autocast():
            return module(**{name: inputs})[name]

    def _loss(self, reps: dict[str, torch.Tensor], extras: dict[str, torch.Tensor]) -> torch.Tensor:
        if not self.config.gather_negatives:
            self._extras = extras
            return self.task.compute_loss(reps, extras)
        gathered = {k: gather_with_grad(v, self.dist) for k, v in reps.items()}
        self._extras = {k: gather_nograd(v, self.dist) for k, v in extras.items()}
        return self.task.compute_loss(gathered, self._extras)

    def _backward(self, loss: torch.Tensor) -> None:
        # each rank's gather passes gradient only to its own slice and DDP averages over ranks: scale by world size
        if self.config.gather_negatives:
            loss = loss * self.dist.world_size
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def _sync_context(self, last: bool):
        if self.ddp is None or last:
            return contextlib.nullcontext()
        return self.ddp.no_sync()

    def compute_gradients(self, batch: dict[str, Any]) -> float:
        """Forward and backward for one (local) batch; gradients are left in ``.grad``. Returns the loss."""
        self.model.train()
        self.task.train()
        towers = {name: _to(inputs, self.device) for name, inputs in self.task.towers(batch).items()}
        with torch.no_grad(), self._autocast():
            extras = self.task.extras(batch, self.model, self.device)
        if self.config.grad_cache:
            sizes = {"queries": self.config.gc_query_chunk, "passages": self.config.gc_passage_chunk,
                     "pairs": self.config.gc_passage_chunk}
            loss = cached_step(self._forward, {n: (inp, sizes[n]) for n, inp in towers.items()},
                               lambda reps: self._loss(reps, extras), self.device, backward=self._backward,
                               sync_context=self._sync_context)
        else:
            with self._autocast():
                reps = (self.ddp or self.model)(**towers)
            loss = self._loss(reps, extras)
            self._backward(loss)
        self._sync_task_grads()
        return float(loss.detach())

    def _sync_task_grads(self) -> None:
        """Parameters of the task (a learnable temperature) live outside the DDP-wrapped model, so DDP does not
        average their gradients: all-reduce them here so every rank takes the same step. Without the gather each
        rank's gradient is that of its local loss: average them, as DDP does for the model. With the gather every
        rank already holds the gradient of the global loss, times world_size (``_backward``'s scale): the average
        is divided by world_size once more, giving the single-process gradient on the global batch."""
        if self.ddp is None:
            return
        params = [p for p in self.task.parameters() if p.requires_grad]
        w = self.dist.world_size
        all_reduce_grads(params, self.dist, divide_by=w * w if self.config.gather_negatives else w)

    def optimizer_step(self) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.config.max_grad_norm:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.task.after_step({}, self._extras)

    def check_resumable(self, path: Path) -> None:
        """``ValueError`` (one line) when the run asked for differs from the one checkpointed at ``path``: world
        size, training settings (``check_same_settings``), the model it started from (weights sampled by
        ``start_model_digest``, so a moved directory is fine but other weights are not) or the training
        examples (the driver's fingerprint). Older checkpoints without a record are not checked for it. An
        unreadable ``trainer_state.json`` is left to the load, which falls back to an older checkpoint."""
        try:
            state = json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError):
            return
        if not isinstance(state, dict):
            return
        if state.get("world_size", 1) != self.dist.world_size:
            raise ValueError(f"{path}: saved with world size {state.get('world_size')}, "
                             f"resuming with {self.dist.world_size}")
        fresh = "; drop the changes, or train in a new --output"
        advice = fresh + ("" if is_adapter_checkpoint(path) else f" (-m {path / 'model'} starts there)")
        saved = dict(state.get("config") or {})
        if state.get("precision") == self.precision:  # auto and fp32 on a CPU are one precision
            saved["precision"] = self.config.precision
        check_same_settings(path, saved, self.config, advice)
        # another model or other data: no -m advice, the checkpoint's weights are not the ones asked for
        if state.get("start_model") and state["start_model"] != self.start_model:
            raise ValueError(f"{path}: --resume continues a run with its own model, but --model {self.config.model} "
                             f"is another (other weights, shapes or settings){fresh}")
        if state.get("data_fingerprint") and self.data_fingerprint and \
                state["data_fingerprint"] != self.data_fingerprint:
            raise ValueError(f"{path}: --resume continues a run on its own training examples, but these differ "
                             f"(another file, split, content or negatives){fresh}")

    def seed_rng(self) -> None:
        """torch's seed for this run and rank (dropout masks): ``cfg.seed`` on rank 0, a distinct one per rank."""
        seed_rank(self.config.seed, self.dist)

    # ---------- checkpoints ----------
    def _state(self) -> dict[str, Any]:
        return {"global_step": self.global_step, "epoch": self.epoch, "next_batch": self.next_batch,
                "scheduler": self.scheduler.state_dict(), "config": self.config.to_json(),
                "world_size": self.dist.world_size, "precision": self.precision,
                "start_model": self.start_model, "data_fingerprint": self.data_fingerprint,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None}

    def save_checkpoint(self) -> None:
        from .checkpoint import rng_tensors

        rngs = all_gather_objects(rng_tensors(), self.dist)  # every rank's RNG, so each resumes its own masks
        if self.dist.is_main:
            save_checkpoint(self.output / "checkpoints", self.global_step, self.model, self.task, self.optimizer,
                            self._state(), keep=self.config.save_total_limit, rank_rngs=rngs)
        barrier(self.dist)

    def resume(self) -> bool:
        """Load the latest intact checkpoint (model, loss state, optimizer, schedule, every rank's RNG): the run
        then ends with the weights of an uninterrupted one. ``ValueError`` when the run differs from the checkpoint's
        (``check_resumable``). ``False`` when there is none."""
        found = list_checkpoints(self.output / "checkpoints")
        if not found:
            log.info("no checkpoint under %s: starting from scratch", self.output / "checkpoints")
            return False
        self.check_resumable(found[-1])  # before loading: a changed shape would fail inside the load
        path, state = load_latest_checkpoint(found, self.model, self.task, self.optimizer,
                                             rank=self.dist.rank)  # skips damaged ones
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.global_step, self.epoch, self.next_batch = state["global_step"], state["epoch"], state["next_batch"]
        self.resumed_from = path
        log.info("resumed from %s (step %d)", path, self.global_step)
        return True

    # ---------- the loop ----------
    def train(self) -> dict[str, Any]:
        cfg = self.config
        self.seed_rng()
        if cfg.resume:
            self.resume()
        epochs = math.ceil(self.total_steps / len(self.sampler))
        logger = _RunLogger(self.output, cfg.report_to) if self.dist.is_main else None
        if self.dist.is_main:
            self.output.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.output / "train_config.json", cfg.to_json())
        log.info("training %d steps (%d per epoch), batch %d%s%s", self.total_steps, len(self.sampler),
                 cfg.batch_size, ", GradCache" if cfg.grad_cache else "",
                 f", {self.dist.world_size} ranks" if self.dist.enabled else "")
        t0, seen, losses, last_eval = time.perf_counter(), 0, [], {}
        batch_stats: list[dict[str, float]] = []  # the collator's per-batch statistics (crop lengths), this window
        if self.eval_fn and cfg.eval_steps and self.global_step == 0:
            self._evaluate(logger)  # the start of the curve
        progress = _progress(self.total_steps, self.global_step, self.dist.is_main)
        for epoch, b, batch in iterate(self.sampler, self.epoch, self.next_batch, epochs):
            if self.global_step >= self.total_steps:
                break
            local = local_slice(batch, self.dist.rank, self.dist.world_size)
            inputs = self.collate(local, epoch)
            batch_stats.append(inputs.pop("stats", {}))  # rank 0 logs its own share's statistics
            losses.append(self.compute_gradients(inputs))
            check_finite_loss(losses[-1], self.global_step + 1)
            self.optimizer_step()
            self.global_step += 1
            self.epoch, self.next_batch = (epoch, b + 1)
            seen += len(batch)
            if progress is not None:
                progress.update(1)
            if logger and (self.global_step % cfg.logging_steps == 0 or self.global_step == self.total_steps):
                rate = seen / (time.perf_counter() - t0)
                logger.log(self.global_step, {"loss": sum(losses) / len(losses),
                                              "lr": self.scheduler.get_last_lr()[0], "examples_per_s": rate},
                           extra=window_stats(batch_stats))
                losses, batch_stats = [], []
            if self.eval_fn and cfg.eval_steps and self.global_step % cfg.eval_steps == 0:
                last_eval = self._evaluate(logger)
            if cfg.save_steps and self.global_step % cfg.save_steps == 0 and self.global_step < self.total_steps:
                self.save_checkpoint()
        if progress is not None:
            progress.close()
        if self.eval_fn and (not cfg.eval_steps or self.global_step % cfg.eval_steps):
            last_eval = self._evaluate(logger)
        summary = {"steps": self.global_step, "train_seconds": round(time.perf_counter() - t0, 1), "eval": last_eval}
        from ..modeling.lora import MERGED_DIR, parameter_counts, save_merged  # issue 19

        summary["parameters"] = parameter_counts(self.model)
        if self.dist.is_main:
            with atomic_dir(self.output / "model") as tmp:
                self.model.save(tmp)
            if cfg.merge_lora:  # issue 19: the adapter folded into the base weights, a plain HF directory
                with atomic_dir(self.output / MERGED_DIR) as tmp:
                    save_merged(self.output / "model", tmp, type(self.model))
            from retr.indexing.versions import machine_info, retr_version

            write_json_atomic(self.output / "meta.json", {
                "made_by": "retr train", "retr_version": retr_version(), "config": cfg.to_json(),
                "data_fingerprint": self.data_fingerprint, "machine": machine_info(), **summary})
            logger.close()
        barrier(self.dist)
        return summary

    def _evaluate(self, logger) -> dict[str, float]:
        metrics = {}
        if self.dist.is_main:
            metrics = self.eval_fn(self.model)
            if logger:
                logger.log(self.global_step, {f"eval/{k}": v for k, v in metrics.items()})
        barrier(self.dist)
        return metrics


class NonFiniteLossError(ValueError):
    """The training loss became NaN or infinite: stepping on would write NaN into every weight."""


def check_finite_loss(loss: float, step: int) -> None:
    """Raise :class:`NonFiniteLossError` before the optimizer applies a NaN/inf gradient (the weights stay those
    of the last finite step; nothing is saved). Usual causes: a learning rate or temperature too aggressive,
    fp16 overflow, or non-finite teacher scores."""
    if not math.isfinite(loss):  # the advice: a new run, not --resume (it refuses a new --lr) nor the last
        # checkpoint (its weights may already diverge)
        raise NonFiniteLossError(f"step {step}: the training loss is {loss}, stopped before the update (no model "
                                 "saved); lower --lr, raise --temperature or try --precision bf16/fp32, in a new "
                                 "--output")


def _progress(total: int, start: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc="train", unit="step")


def window_stats(per_batch: list[dict[str, float]]) -> dict[str, float]:
    """Per-batch statistics over a logging window: ``*_min`` by min, ``*_max`` by max, others by mean."""
    out: dict[str, float] = {}
    for name in dict.fromkeys(k for d in per_batch for k in d):
        values = [d[name] for d in per_batch if name in d]
        out[name] = (min(values) if name.endswith("_min") else max(values) if name.endswith("_max")
                     else sum(values) / len(values))
    return out


class _RunLogger:
    """Log lines, a JSONL history (``train_log.jsonl``) and optionally TensorBoard. ``extra`` values (batch
    statistics) go to the history and TensorBoard, and to the console only under ``--verbose`` (80 columns)."""

    def __init__(self, output: Path, report_to: list[str]):
        output.mkdir(parents=True, exist_ok=True)
        self.file = open(output / "train_log.jsonl", "a", encoding="utf-8")
        self.tb = None
        if "tensorboard" in report_to:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(output / "tensorboard"))

    def log(self, step: int, values: dict[str, float], extra: dict[str, float] | None = None) -> None:
        log.info("step %d  %s", step, "  ".join(f"{k} {v:.4g}" for k, v in values.items()))
        if extra:
            log.debug("step %d  %s", step, "  ".join(f"{k} {v:.4g}" for k, v in extra.items()))
            values = {**values, **extra}
        try:
            self.file.write(json.dumps({"step": step, **values}) + "\n")
            self.file.flush()
        except OSError as e:  # a full disk: one line naming the file (the checkpoints written so far are intact)
            from retr.indexing.errors import OutputError, describe_errno

            raise OutputError(f"cannot write {self.file.name}: {describe_errno(e.errno or 0)}") from None
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()

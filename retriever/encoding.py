"""Encode a corpus (or a row range of it) to disk, block by block, resumably.

Each block of ``block_size`` passages is read from the memory-mapped corpus, tokenised in one call (fast
tokenizer, all cores unless ``TOKENIZERS_PARALLELISM=false``), length-sorted inside the block, encoded and
written into a float32 ``.npy`` memory map; ``progress.json`` then records the rows done. A killed run started
again with the same model, corpus, range and settings resumes at its last completed block and produces the same
vectors as an uninterrupted run, because block boundaries (and so batch composition) do not depend on where it
stopped. Under ``torchrun`` each rank encodes its own row range into its own work directory and resumes alone.

Memory: one block of passages as Python strings and tokens (about 200 bytes per token, e.g. ~160 MiB for 8,192
passages of 100 tokens) plus the model; the vectors go to disk.
"""
from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retr.indexing.shards import PartialEmbeddings

from .data.corpus import Corpus
from .modeling.dual_encoder import DualEncoder

log = logging.getLogger(__name__)

DEFAULT_BLOCK = 8192


@dataclass
class EncodeStats:
    rows: int
    resumed_from: int
    seconds: float

    @property
    def docs_per_second(self) -> float:
        return (self.rows - self.resumed_from) / max(self.seconds, 1e-9)


def encoding_key(encoder: DualEncoder, corpus: Corpus, start: int, end: int, block_size: int,
                 batch_size: int) -> dict[str, Any]:
    """Everything that decides the vectors of a run; a work dir with another key is started over."""
    from .backends import backend_id

    tower = encoder.passage_tower
    key = {"passage_fingerprint": tower.fingerprint(side="passage"), "corpus": corpus.fingerprint, "start": start, "end": end,
           "block_size": block_size, "batch_size": batch_size, "precision": tower.precision,
           "device": str(tower.device)}
    backend = backend_id(getattr(tower, "runner", None))
    if backend is not None:  # issue 22: ONNX Runtime / OpenVINO vectors are not torch's (torch keys unchanged)
        key["backend"] = backend
    return key


def encode_corpus(encoder: DualEncoder, corpus: Corpus, work_dir: str | os.PathLike, start: int = 0,
                  end: int | None = None, block_size: int = DEFAULT_BLOCK, batch_size: int = 64,
                  show_progress: bool = True) -> tuple[PartialEmbeddings, EncodeStats]:
    """Encode passages ``start..end`` of ``corpus`` into ``work_dir/embeddings.npy`` (resuming if possible).

    Returns the completed ``PartialEmbeddings`` (``.vectors`` is a float32 [end - start, dim] memory map;
    ``publish`` moves it into a shard or index directory) and timing stats."""
    end = len(corpus) if end is None else min(end, len(corpus))
    if not 0 <= start <= end:
        raise ValueError(f"row range {start}..{end} is outside the corpus of {len(corpus)} documents")
    key = encoding_key(encoder, corpus, start, end, block_size, batch_size)
    partial = PartialEmbeddings(work_dir, end - start, encoder.dim, key)
    resumed = partial.done
    if resumed:
        log.info("resuming encoding at row %d of %d (block %d of %d) from %s", start + resumed, end,
                 resumed // block_size + 1, -(-(end - start) // block_size), work_dir)
    bar = None
    if show_progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=end - start, initial=resumed, desc="encoding passages", unit="doc", smoothing=0.05)
    sep = encoder.passage_tower.config.title_sep
    kill_after = int(os.environ.get("RETR_KILL_AFTER_BLOCKS", "0") or 0)  # fault injection for resume tests
    t0 = time.perf_counter()
    try:
        for i, block in enumerate(corpus.iter_blocks(block_size, sep, start + resumed, end), 1):
            vectors = encoder.encode_passages(block.texts, batch_size=batch_size, show_progress=False)
            partial.write(vectors)
            if bar is not None:
                bar.update(len(block.texts))
            if kill_after and i >= kill_after and not partial.complete:
                os.kill(os.getpid(), signal.SIGKILL)
    finally:
        if bar is not None:
            bar.close()
    stats = EncodeStats(end - start, resumed, time.perf_counter() - t0)
    log.info("encoded %d passages in %.1fs (%.0f docs/s)", stats.rows - resumed, stats.seconds, stats.docs_per_second)
    return partial, stats


def encode_in_memory(encoder: DualEncoder, corpus: Corpus, block_size: int = DEFAULT_BLOCK, batch_size: int = 64,
                     show_progress: bool = True) -> np.ndarray:
    """All passage vectors as one float32 array (small corpora, tests); memory grows with the corpus."""
    parts = [encoder.encode_passages(b.texts, batch_size=batch_size, show_progress=False)
             for b in corpus.iter_blocks(block_size, encoder.passage_tower.config.title_sep)]
    return np.concatenate(parts) if parts else np.zeros((0, encoder.dim), np.float32)


def work_dir_for(output: str | os.PathLike, tag: str = "encoding") -> Path:
    """The hidden work directory beside ``output`` where its vectors are encoded (kept across kills)."""
    output = Path(output)
    return output.parent / f".{output.name}.{tag}"

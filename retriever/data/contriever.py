"""Unsupervised Contriever data (Izacard et al. 2022): two *independent* random crops of one chunk are a
positive pair; each crop then loses tokens at random (word deletion). Defaults are the paper's.

Chunks are cut per document (never across two documents, unlike Contriever's concatenated token stream,
so a pair always comes from one text). Crops operate on token ids, as Contriever's ``randomcrop`` and
``deleteword`` do, and every crop gets the model's [CLS]/[SEP] around it. Randomness comes from a
generator seeded by (seed, epoch, example index), so an epoch is reproducible and a resumed run sees the
same crops as an uninterrupted one.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .beir import load_corpus
from .errors import DataError


@dataclass
class CropConfig:
    chunk_length: int = 256  # tokens per chunk (Contriever: 256)
    ratio_min: float = 0.1  # crop length / chunk length ~ U[ratio_min, ratio_max] (Contriever: 0.1, 0.5)
    ratio_max: float = 0.5
    deletion_prob: float = 0.1  # each token of a crop deleted with this probability (Contriever: 0.1)
    min_chunk_tokens: int = 8  # shorter chunks (document tails) are dropped

    def __post_init__(self) -> None:
        if not 0 < self.ratio_min <= self.ratio_max <= 1:
            raise ValueError(f"need 0 < ratio_min <= ratio_max <= 1, got {self.ratio_min}, {self.ratio_max}")
        if not 0 <= self.deletion_prob < 1:
            raise ValueError(f"deletion_prob must be in [0, 1), got {self.deletion_prob}")


def read_texts(paths: Sequence[str | Path]) -> list[str]:
    """Texts from BEIR folders / ``corpus.jsonl`` files (title + text) or plain text files (one per line)."""
    texts: list[str] = []
    for p in map(Path, paths):
        if p.is_dir():
            p = p / "corpus.jsonl"
        if p.suffix == ".jsonl":
            texts.extend(load_corpus(p).passages())
        elif p.exists():
            with open(p, encoding="utf-8") as fh:
                texts.extend(line.strip() for line in fh if line.strip())
        else:
            raise DataError(p, None, "corpus file not found")
    return texts


def chunk_corpus(texts: Sequence[str], tokenizer: Any, cfg: CropConfig, batch: int = 1000) -> list[np.ndarray]:
    """Tokenize (no special tokens) and cut each document into chunks of ``chunk_length`` token ids."""
    chunks: list[np.ndarray] = []
    for start in range(0, len(texts), batch):
        enc = tokenizer(list(texts[start:start + batch]), add_special_tokens=False, truncation=False,
                        return_attention_mask=False, return_token_type_ids=False, verbose=False)["input_ids"]
        for ids in enc:
            ids = np.asarray(ids, dtype=np.int32)
            for s in range(0, len(ids), cfg.chunk_length):
                piece = ids[s:s + cfg.chunk_length]
                if len(piece) >= cfg.min_chunk_tokens:
                    chunks.append(piece)
    return chunks


def random_crop(tokens: np.ndarray, rng: np.random.Generator, ratio_min: float, ratio_max: float) -> np.ndarray:
    """A contiguous span of ``int(len * U[ratio_min, ratio_max])`` tokens (at least one) at a random start."""
    ratio = rng.uniform(ratio_min, ratio_max)
    length = max(1, int(len(tokens) * ratio))
    start = int(rng.integers(0, len(tokens) - length + 1))
    return tokens[start:start + length]


def delete_words(tokens: np.ndarray, rng: np.random.Generator, p: float) -> np.ndarray:
    """Drop each token independently with probability ``p`` (keeps at least one token)."""
    if p <= 0:
        return tokens
    keep = rng.random(len(tokens)) > p
    if not keep.any():
        keep[int(rng.integers(0, len(tokens)))] = True
    return tokens[keep]


class ContrieverPairs:
    """Index -> (crop_a, crop_b) token-id lists with [CLS] ... [SEP], for one epoch at a time."""

    def __init__(self, chunks: list[np.ndarray], cls_id: int, sep_id: int, cfg: CropConfig | None = None, seed: int = 0):
        if not chunks:
            raise ValueError("no chunks to train on (corpus empty or every document shorter than min_chunk_tokens)")
        self.chunks, self.cls_id, self.sep_id = chunks, cls_id, sep_id
        self.cfg = cfg or CropConfig()
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.chunks)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, i: int) -> tuple[list[int], list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch, int(i)])
        chunk, c = self.chunks[i], self.cfg
        pair = []
        for _ in range(2):  # two independent crops of the same chunk
            crop = delete_words(random_crop(chunk, rng, c.ratio_min, c.ratio_max), rng, c.deletion_prob)
            pair.append([self.cls_id, *crop.tolist(), self.sep_id])
        return pair[0], pair[1]

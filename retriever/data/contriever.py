"""Unsupervised Contriever data (Izacard et al. 2022): two *independent* random crops of one chunk are a
positive pair; each crop then loses tokens at random (word deletion). Defaults are the paper's.

The corpus is tokenised once into a flat memory-mapped token stream (``token_store.py``, cached on disk), and a
chunk is a (start, end) span of it. Two ways to cut chunks (``--chunking``):

- ``stream`` (Contriever's, ``src/data.py``): documents concatenated into one token stream, chunks of
  ``chunk_length`` tokens laid end to end from a random offset drawn per epoch, so a chunk may span the end of
  one document and the start of the next, and every chunk is full length.
- ``document`` (retr's): chunks cut per document, never across two (a pair always comes from one text); a
  document's tail shorter than ``min_chunk_tokens`` is dropped, so most chunks of a short-document corpus are
  shorter than ``chunk_length`` (SciFact: 63% under 256 tokens).

Memory: the tokens stay on disk (memmap, paged in as read). ``stream`` chunks are computed from their index
(O(1) memory); ``document`` chunks are two int64 arrays (16 bytes per chunk). Never a Python list of chunks.

Crops operate on token ids, as Contriever's ``randomcrop`` and ``deleteword`` do, and every crop gets the
model's [CLS]/[SEP] around it. Randomness comes from a generator seeded by (seed, epoch, example index), so an
epoch is reproducible and a resumed run sees the same crops as an uninterrupted one.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

import numpy as np

from .corpus import load_corpus
from .errors import DataError
from .token_store import TokenStore, cached_store

CHUNKINGS = ("stream", "document")


@dataclass
class CropConfig:
    chunk_length: int = 256  # tokens per chunk (Contriever: 256)
    ratio_min: float = 0.1  # crop length / chunk length ~ U[ratio_min, ratio_max] (Contriever: 0.1, 0.5)
    ratio_max: float = 0.5
    deletion_prob: float = 0.1  # each token of a crop deleted with this probability (Contriever: 0.1)
    min_chunk_tokens: int = 8  # document chunking: shorter chunks (document tails) are dropped

    def __post_init__(self) -> None:
        if not 0 < self.ratio_min <= self.ratio_max <= 1:
            raise ValueError(f"need 0 < ratio_min <= ratio_max <= 1, got {self.ratio_min}, {self.ratio_max}")
        if not 0 <= self.deletion_prob < 1:
            raise ValueError(f"deletion_prob must be in [0, 1), got {self.deletion_prob}")
        if self.chunk_length < 1:
            raise ValueError(f"chunk_length must be >= 1, got {self.chunk_length}")


# ---------- reading: the one seam to the corpus loader ----------
def _corpus_file(p: Path) -> Path:
    p = p / "corpus.jsonl" if p.is_dir() else p
    if not p.exists():
        raise DataError(p, None, "corpus file not found")
    return p


def read_text_blocks(paths: Sequence[str | Path], block_size: int = 8192, sep: str = " ") -> Iterator[list[str]]:
    """Texts in blocks of ``block_size``, streaming: BEIR folders / ``corpus.jsonl`` files (title + sep + text,
    read through the memory-mapped corpus store, so validation errors are the corpus loader's) or plain text
    files (one text per non-blank line). Only one block of texts is held at a time."""
    for p in map(_corpus_file, map(Path, paths)):
        if p.suffix == ".jsonl":
            for block in load_corpus(p).iter_blocks(block_size, sep=sep):
                yield block.texts
            continue
        block: list[str] = []
        for text in _text_lines(p):
            block.append(text)
            if len(block) == block_size:
                yield block
                block = []
        if block:
            yield block


def _text_lines(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8-sig") as fh:
        for line in fh:
            if line.strip():
                yield line.strip()


def file_fingerprints(paths: Sequence[str | Path]) -> list[str]:
    """sha256 (first 16 hex) of each input file's bytes, streamed (what a BEIR ``Corpus.fingerprint`` is)."""
    out = []
    for p in map(_corpus_file, map(Path, paths)):
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        out.append(h.hexdigest()[:16])
    return out


def corpus_tokens(paths: Sequence[str | Path], tokenizer: Any, cache_dir: str | Path | None = None,
                  block_size: int = 8192, sep: str = " ") -> TokenStore:
    """The corpus files tokenised into one cached token store (built on first use)."""
    if not paths:
        raise ValueError("no training data: pass --data (BEIR folder, corpus.jsonl or text file)")
    return cached_store(lambda: read_text_blocks(paths, block_size, sep), file_fingerprints(paths), tokenizer,
                        cache_dir, sep)


# ---------- chunks: (start, end) spans of the token stream ----------
class Chunks(Protocol):
    def __len__(self) -> int: ...

    def get(self, i: int, epoch: int) -> np.ndarray: ...


class StreamChunks:
    """Contriever's chunks: ``tokens[o + i*L : o + (i+1)*L]`` with one random offset ``o`` in [0, L) per epoch
    (``Dataset.generate_offset``), across document boundaries. The count is the same every epoch (the smallest
    over offsets)."""

    def __init__(self, tokens: np.ndarray, chunk_length: int, seed: int = 0):
        self.tokens, self.length, self.seed = tokens, chunk_length, seed
        total = len(tokens)
        self.max_offset = max(0, min(chunk_length - 1, total - chunk_length))
        self.n = max(0, (total - self.max_offset) // chunk_length)

    def __len__(self) -> int:
        return self.n

    def offset(self, epoch: int) -> int:
        return int(np.random.default_rng([self.seed, epoch, 0x0FF5E7]).integers(0, self.max_offset + 1))

    def get(self, i: int, epoch: int) -> np.ndarray:
        start = self.offset(epoch) + int(i) * self.length
        return np.asarray(self.tokens[start:start + self.length])

    def describe(self) -> dict[str, Any]:
        return {"chunking": "stream", "chunk_length": self.length, "chunks": self.n}


class DocumentChunks:
    """retr's chunks: each document cut into pieces of ``chunk_length`` tokens; a piece shorter than
    ``min_tokens`` (a document's tail, or a short document) is dropped. 16 bytes per chunk."""

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray, chunk_length: int, min_tokens: int = 8):
        self.tokens, self.length = tokens, chunk_length
        lengths = np.diff(np.asarray(offsets, dtype=np.int64))
        full = lengths // chunk_length if chunk_length >= min_tokens else np.zeros_like(lengths)
        tail = lengths % chunk_length
        counts = full + (tail >= max(min_tokens, 1))
        doc_start = np.repeat(np.asarray(offsets[:-1], dtype=np.int64), counts)
        first = np.repeat(np.cumsum(counts) - counts, counts)
        self.starts = doc_start + chunk_length * (np.arange(int(counts.sum()), dtype=np.int64) - first)
        self.ends = np.minimum(self.starts + chunk_length, np.repeat(np.asarray(offsets[1:], dtype=np.int64), counts))

    def __len__(self) -> int:
        return len(self.starts)

    def get(self, i: int, epoch: int) -> np.ndarray:
        return np.asarray(self.tokens[self.starts[i]:self.ends[i]])

    def describe(self) -> dict[str, Any]:
        return {"chunking": "document", "chunk_length": self.length, "chunks": len(self)}


class ListChunks:
    """Chunks given as arrays (tests, small inputs)."""

    def __init__(self, chunks: Sequence[np.ndarray]):
        self.chunks = chunks

    def __len__(self) -> int:
        return len(self.chunks)

    def get(self, i: int, epoch: int) -> np.ndarray:
        return np.asarray(self.chunks[i])


def make_chunks(store: TokenStore, chunking: str, cfg: CropConfig, seed: int = 0) -> StreamChunks | DocumentChunks:
    if chunking == "stream":
        return StreamChunks(store.tokens, cfg.chunk_length, seed)
    if chunking == "document":
        return DocumentChunks(store.tokens, store.offsets, cfg.chunk_length, cfg.min_chunk_tokens)
    raise ValueError(f"chunking must be one of {', '.join(CHUNKINGS)}, got {chunking!r}")


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
    """Index -> (crop_a, crop_b) token-id lists with [CLS] ... [SEP], for one epoch at a time. ``chunks``: a
    ``StreamChunks``/``DocumentChunks`` (or a list of token-id arrays)."""

    def __init__(self, chunks: Chunks | Sequence[np.ndarray], cls_id: int, sep_id: int, cfg: CropConfig | None = None,
                 seed: int = 0):
        if not hasattr(chunks, "get"):
            chunks = ListChunks(chunks)
        if not len(chunks):
            raise ValueError("no chunks to train on (corpus empty, or shorter than one chunk / min_chunk_tokens)")
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
        chunk, c = self.chunks.get(int(i), self.epoch), self.cfg
        pair = []
        for _ in range(2):  # two independent crops of the same chunk
            crop = delete_words(random_crop(chunk, rng, c.ratio_min, c.ratio_max), rng, c.deletion_prob)
            pair.append([self.cls_id, *crop.tolist(), self.sep_id])
        return pair[0], pair[1]

"""A corpus tokenised once into one flat on-disk token stream, as Contriever's preprocessing does
(``preprocess.py`` concatenates every document's token ids, no special tokens, into one tensor per shard).

Layout of a store directory (written atomically, read with ``np.memmap``)::

    tokens.bin    int32 [T]      every document's token ids, documents one after another, no separators
    offsets.bin   int64 [N + 1]  document i is tokens[offsets[i]:offsets[i + 1]]
    meta.json     counts, tokenizer and corpus fingerprints, format version

Building reads texts in blocks (``block_size`` texts per tokenizer call, fast tokenizers batch them) and
appends each block's ids and lengths to the two files, so memory while building is one block of texts and
their ids, whatever the corpus size. Opened, the store costs no RAM of its own: the OS pages the memmapped
tokens in as chunks are read (and may drop them again). Disk: 4 bytes per token + 8 per document.

Stores are cached under ``cache_dir/<key>/``, ``key`` = hash(corpus fingerprints, tokenizer fingerprint,
title/text separator, format version): a second run on the same corpus and tokenizer reuses the tokens.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from retr.indexing.atomic import atomic_dir, read_json

log = logging.getLogger(__name__)

FORMAT = 1
TOKENS, OFFSETS, META = "tokens.bin", "offsets.bin", "meta.json"


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """What decides the token ids: a fast tokenizer's full JSON (vocab, normaliser, pre-tokeniser), else the
    class, vocabulary and init settings."""
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
        h.update(json.dumps(getattr(tokenizer, "init_kwargs", {}), sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def default_cache_dir() -> Path:
    """``tokens/`` under retr's cache root (``$RETR_CACHE_DIR``, else ``$XDG_CACHE_HOME/retr``, ...)."""
    from .corpus import cache_root
    return cache_root() / "tokens"


@dataclass
class TokenStore:
    tokens: np.ndarray  # int32 [T], memory-mapped
    offsets: np.ndarray  # int64 [N + 1], memory-mapped
    directory: Path
    key: str

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def num_documents(self) -> int:
        return int(self.offsets.shape[0]) - 1

    def document(self, i: int) -> np.ndarray:
        return self.tokens[int(self.offsets[i]):int(self.offsets[i + 1])]

    @classmethod
    def open(cls, directory: str | Path) -> "TokenStore":
        directory = Path(directory)
        meta = read_json(directory / META)
        if meta.get("format") != FORMAT:
            raise ValueError(f"{directory}: token store format {meta.get('format')}, expected {FORMAT}")
        tokens = np.memmap(directory / TOKENS, dtype=np.int32, mode="r", shape=(meta["num_tokens"],)) \
            if meta["num_tokens"] else np.zeros(0, np.int32)
        offsets = np.memmap(directory / OFFSETS, dtype=np.int64, mode="r", shape=(meta["num_documents"] + 1,))
        return cls(tokens, offsets, directory, meta["key"])

    @classmethod
    def build(cls, blocks: Iterable[list[str]], tokenizer: Any, directory: str | Path, key: str = "",
              meta: dict[str, Any] | None = None) -> "TokenStore":
        """Tokenise ``blocks`` of texts (no special tokens, no truncation) into a store at ``directory``."""
        n_tokens, n_docs = 0, 0
        with atomic_dir(directory) as tmp:
            with open(tmp / TOKENS, "wb") as ft, open(tmp / OFFSETS, "wb") as fo:
                fo.write(np.zeros(1, np.int64).tobytes())
                for texts in blocks:
                    if not texts:
                        continue
                    ids = tokenizer(list(texts), add_special_tokens=False, truncation=False,
                                    return_attention_mask=False, return_token_type_ids=False, verbose=False)["input_ids"]
                    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
                    flat = np.fromiter((t for x in ids for t in x), dtype=np.int32, count=int(lengths.sum()))
                    ft.write(flat.tobytes())
                    fo.write((n_tokens + np.cumsum(lengths)).tobytes())
                    n_tokens += int(lengths.sum())
                    n_docs += len(ids)
            info = {"format": FORMAT, "key": key, "num_tokens": n_tokens, "num_documents": n_docs,
                    "tokenizer": tokenizer_fingerprint(tokenizer), **(meta or {})}
            (tmp / META).write_text(json.dumps(info, indent=1))
        log.info("tokenised %d documents into %d tokens (%s)", n_docs, n_tokens, directory)
        return cls.open(directory)


def cached_store(blocks_fn, fingerprints: list[str], tokenizer: Any, cache_dir: str | Path | None = None,
                 sep: str = " ") -> TokenStore:
    """The store of this corpus (``fingerprints``: one per input file) and tokenizer: opened from
    ``cache_dir/<key>`` if built before, else built there from ``blocks_fn()`` (an iterator of text blocks)."""
    parts = {"format": FORMAT, "corpus": fingerprints, "tokenizer": tokenizer_fingerprint(tokenizer), "sep": sep}
    key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
    root = Path(cache_dir or default_cache_dir())
    if root.exists() and not root.is_dir():
        raise ValueError(f"token cache {root} is not a directory")
    directory = root / key
    if (directory / META).exists():
        log.info("reusing token store %s", directory)
        return TokenStore.open(directory)
    try:
        return TokenStore.build(blocks_fn(), tokenizer, directory, key=key, meta={"corpus": fingerprints, "sep": sep})
    except OSError:
        if (directory / META).exists():  # another process built the same store meanwhile: same content
            return TokenStore.open(directory)
        raise

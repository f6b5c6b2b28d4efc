"""A retr dense model as an MTEB encoder, and a local BEIR folder as an MTEB retrieval task (issue 23).

``RetrMtebEncoder(model)`` implements mteb's ``EncoderProtocol`` (mteb >= 2: ``encode(inputs, *,
task_metadata, hf_split, hf_subset, prompt_type)``): queries go through the model's query tower with its
query prefix / instruction, documents through the passage tower with its passage prefix, exactly as
``retr eval`` encodes them, so ``mteb.evaluate(RetrMtebEncoder("minilm"), task)`` gives retr's numbers.
Similarity is the dot product (what retr's FAISS index scores; equal to cosine for normalising models).

``beir_task(folder, split)`` wraps a local BEIR folder as an ``AbsTaskRetrieval`` without touching the
network (mteb's own tasks download from the Hugging Face hub). MTEB joins a document's title and text as
``(title + " " + text).strip()``, as retr does.

Memory: mteb holds the corpus embeddings of a task in memory (n_docs x dim float32), unlike ``retr eval``
which streams them to an index; fine for BEIR-sized corpora, not for an 8.8M-passage one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


class RetrMtebEncoder:
    """An mteb encoder over a retr ``DualEncoder`` (a model directory, hub id, ``minilm`` or a loaded model).

    ``encode`` returns float32 [n, dim]; raises ImportError when mteb is not installed."""

    def __init__(self, model: Any, batch_size: int = 64, precision: str = "auto", **overrides: Any):
        from mteb.models.model_meta import ModelMeta

        from retr.retriever.modeling import DualEncoder

        self.model = model if isinstance(model, DualEncoder) else DualEncoder.from_pretrained(model, **overrides)
        self.model.set_precision(precision)
        self.batch_size = batch_size
        name = Path(str(self.model.name)).name or "model"
        self.mteb_model_meta = ModelMeta.create_empty({
            "name": f"retr/{name}", "revision": self.model.fingerprint(), "embed_dim": self.model.dim,
            "similarity_fn_name": "dot", "framework": ["PyTorch"], "use_instructions": False})

    def encode(self, inputs, *, task_metadata=None, hf_split: str = "", hf_subset: str = "",
               prompt_type=None, **kwargs: Any) -> np.ndarray:
        """Embed every text of mteb's DataLoader ``inputs`` (batches with a "text" list): float32 [n, dim].

        ``prompt_type`` query -> the query tower and prefix; document (or None) -> the passage tower."""
        texts: list[str] = []
        for batch in inputs:
            texts.extend(batch["text"])
        is_query = getattr(prompt_type, "value", prompt_type) == "query"
        enc = self.model.query_encoder if is_query else self.model.passage_tower
        return enc.encode(texts, is_query=is_query, batch_size=self.batch_size)

    def similarity(self, embeddings1, embeddings2):
        import torch

        a, b = torch.as_tensor(np.asarray(embeddings1)), torch.as_tensor(np.asarray(embeddings2))
        return (a.reshape(-1, a.shape[-1]) @ b.reshape(-1, b.shape[-1]).T).float()

    def similarity_pairwise(self, embeddings1, embeddings2):
        import torch

        a, b = torch.as_tensor(np.asarray(embeddings1)), torch.as_tensor(np.asarray(embeddings2))
        return (a * b).sum(-1).float()


def beir_task(folder: str | Path, split: str = "test", name: str | None = None, ignore_identical_ids: bool = True):
    """An mteb ``AbsTaskRetrieval`` over a local BEIR folder (no download): judged queries of ``split``.

    ``ignore_identical_ids`` (default True, as ``retr eval`` and BEIR; mteb's own default is False, set True
    only on its ArguAna, Quora, ... tasks): drop retrieved documents whose id equals the query id, so the
    task's numbers equal ``retr eval``'s (``--keep-identical-ids`` matches False)."""
    from datasets import Dataset
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
    from mteb.abstasks.task_metadata import TaskMetadata

    from retr.retriever.data.beir import load_beir

    folder = Path(folder)
    task_name = name or f"Local{folder.name.capitalize()}"
    metadata = TaskMetadata(
        name=task_name, description=f"Local BEIR folder {folder.name}, split {split}.", reference=None,
        dataset={"path": str(folder), "revision": "local"}, type="Retrieval", category="t2t",
        modalities=["text"], eval_splits=[split], eval_langs=["eng-Latn"], main_score="ndcg_at_10",
        date=None, domains=None, task_subtypes=None, license=None, annotations_creators=None, dialect=None,
        sample_creation=None, bibtex_citation="")

    class LocalBeirTask(AbsTaskRetrieval):
        def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
            if self.data_loaded:
                return
            ds = load_beir(folder, split, allow_missing_docs=True)
            corpus = Dataset.from_dict({"id": list(ds.corpus.ids), "title": list(ds.corpus.titles),
                                        "text": list(ds.corpus.texts)})
            queries = Dataset.from_dict({"id": list(ds.eval_queries), "text": list(ds.eval_queries.values())})
            self.dataset = {"default": {split: RetrievalSplitData(
                corpus=corpus, queries=queries, relevant_docs=ds.qrels, top_ranked=None)}}
            self.data_loaded = True

    LocalBeirTask.metadata = metadata
    LocalBeirTask.ignore_identical_ids = ignore_identical_ids  # issue 23: retr eval's default
    LocalBeirTask.__name__ = task_name
    return LocalBeirTask()

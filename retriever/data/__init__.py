"""Data readers: BEIR folders, TREC runs, training examples; every reader fails with one file:line line."""
from .beir import BeirDataset, Corpus, join_title_text, load_beir, load_corpus, load_qrels, load_queries
from .errors import DataError
from .trec import read_trec_run, write_trec_run

__all__ = ["BeirDataset", "Corpus", "DataError", "join_title_text", "load_beir", "load_corpus", "load_qrels",
           "load_queries", "read_trec_run", "write_trec_run"]

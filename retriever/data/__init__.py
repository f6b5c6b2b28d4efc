"""Data readers: BEIR folders, TREC runs, training examples; every reader fails with one file:line line."""
from .beir import BeirDataset, load_beir, load_qrels, load_queries
from .corpus import Corpus, CorpusBlock, cache_root, join_title_text, load_corpus
from .errors import DataError
from .trec import read_trec_run, write_trec_run

__all__ = ["BeirDataset", "Corpus", "CorpusBlock", "DataError", "cache_root", "join_title_text", "load_beir",
           "load_corpus", "load_qrels", "load_queries", "read_trec_run", "write_trec_run"]

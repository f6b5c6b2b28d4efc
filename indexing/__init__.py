"""Floor 1 of retr: stores and searches what it is given; knows nothing of models.

FAISS vector indexes (``faiss_index``), Lucene/BM25 through pyserini (``lucene``), embedding shards
(``shards``) and the atomic-write helpers every artifact uses (``atomic``).
"""
from .atomic import atomic_dir, atomic_file, write_json_atomic, read_json
from .faiss_index import FaissIndex, IndexMismatchError

__all__ = ["atomic_dir", "atomic_file", "write_json_atomic", "read_json", "FaissIndex", "IndexMismatchError"]

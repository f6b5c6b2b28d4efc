"""Floor 1 of retr: stores and searches what it is given; knows nothing of models.

FAISS vector indexes (``faiss_index``; files and their checks in ``faiss_io``), Lucene/BM25 through pyserini
(``lucene``), embedding shards (``shards``), and what keeps every artifact safe: atomic writes and recovery after
kills (``atomic``), one writer per output (``locks``), never replacing what retr did not write and checking
outputs before work (``outputs``), checksums and shape checks on load (``validate``), one-line errors (``errors``).
"""
from .atomic import atomic_dir, atomic_file, write_json_atomic, read_json
from .faiss_index import FaissIndex, IndexMismatchError

__all__ = ["atomic_dir", "atomic_file", "write_json_atomic", "read_json", "FaissIndex", "IndexMismatchError"]

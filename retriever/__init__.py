"""Floor 2 of retr: everything with a model (data, encoders, losses, training, search, rerank)."""
from .hits import Hit, Run

__all__ = ["Hit", "Run"]

"""Models: ``Encoder`` (one tower), ``DualEncoder`` (query + passage towers), cross-encoders."""
from .dual_encoder import DualEncoder
from .encoder import Encoder, EncoderConfig, pool
from .resolve import packaged_minilm_path, resolve_model_path

__all__ = ["DualEncoder", "Encoder", "EncoderConfig", "pool", "packaged_minilm_path", "resolve_model_path"]

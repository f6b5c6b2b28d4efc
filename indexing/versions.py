"""What made an artifact: retr's version and the machine, recorded in every ``meta.json``."""
from __future__ import annotations

import os
import platform


def retr_version() -> str:
    try:
        from importlib.metadata import version
        return version("retr")
    except Exception:
        return "unknown"


def machine_info() -> dict[str, object]:
    info: dict[str, object] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
    }
    try:
        import torch
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:
        pass
    try:
        import faiss
        info["faiss"] = faiss.__version__
    except Exception:
        pass
    return info

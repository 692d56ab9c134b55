"""lora_edu — learn LoRA (Hu et al. 2021) by building it.

The numpy core (``numpy_lora``, ``analysis``) is imported eagerly and needs only numpy.
Everything that needs torch is imported on first use, so ``import lora_edu`` works (and the
first two notebooks run) without torch installed.

Shapes everywhere: ``x (..., d_in)``, ``W (d_out, d_in)``, ``A (r, d_in)``, ``B (d_out, r)``,
``scaling = alpha / r`` (rsLoRA: ``alpha / sqrt(r)``).
"""

from __future__ import annotations

import importlib
from typing import Any

from lora_edu.config import by_profile, cache_dir, data_dir, device, profile

__version__ = "0.1.0"

# Names that live in modules needing torch (or other heavy libraries): imported lazily.
_LAZY: dict[str, str] = {}

__all__ = ["__version__", "by_profile", "cache_dir", "data_dir", "device", "profile"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lora_edu' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

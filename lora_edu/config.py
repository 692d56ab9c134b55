"""Where lora_edu reads its settings: the environment, once, in one place.

| variable            | meaning                                              | default                  |
| ------------------- | ---------------------------------------------------- | ------------------------ |
| ``LORA_EDU_PROFILE`` | run size: ``smoke`` (CI), ``default`` (laptop), ``full`` | ``default``          |
| ``LORA_EDU_DATA``    | folder holding the benchmark datasets                | the repository's ``data/`` |
| ``LORA_EDU_CACHE``   | cached checkpoints (e.g. the pretrained TinyViT)     | ``~/.cache/lora_edu``    |
| ``LORA_EDU_DEVICE``  | force a torch device (``cpu``, ``cuda``, ``cuda:1``, ``mps``) | best available  |
| ``LORA_EDU_RESULTS`` | sweep results (``*.jsonl``) and kept adapters        | the repository's ``data/`` |

This module imports neither torch nor any other heavy library at import time, so the
numpy notebooks run without torch installed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

PROFILES = ("smoke", "default", "full")

T = TypeVar("T")

#: The repository root when lora_edu is used from a checkout (an editable install).
REPO_ROOT = Path(__file__).resolve().parent.parent


def profile() -> str:
    """The active run-size profile, from ``LORA_EDU_PROFILE`` (unset or empty → ``"default"``).

    >>> import os; os.environ["LORA_EDU_PROFILE"] = "smoke"; profile()
    'smoke'
    """
    value = os.environ.get("LORA_EDU_PROFILE", "").strip().lower() or "default"
    if value not in PROFILES:
        raise ValueError(
            f"LORA_EDU_PROFILE={os.environ['LORA_EDU_PROFILE']!r} is not a profile; expected one of "
            f"{', '.join(PROFILES)} (smoke: seconds, for CI; default: minutes on a laptop CPU; "
            "full: paper scale, GPU recommended). Try: export LORA_EDU_PROFILE=default"
        )
    return value


@contextlib.contextmanager
def at_profile(name: str) -> Iterator[None]:
    """Run the block as if ``LORA_EDU_PROFILE`` were ``name`` (e.g. to read the committed
    ``default`` results from a ``smoke`` session), then restore it."""
    old = os.environ.get("LORA_EDU_PROFILE")
    os.environ["LORA_EDU_PROFILE"] = name
    try:
        profile()  # an unknown name fails here, naming the profiles
        yield
    finally:
        if old is None:
            del os.environ["LORA_EDU_PROFILE"]
        else:
            os.environ["LORA_EDU_PROFILE"] = old


def by_profile(smoke: T, default: T, full: T | None = None, *, active: str | None = None) -> T:
    """Pick a size for the active profile: ``steps = by_profile(smoke=20, default=2000, full=20000)``.

    ``full`` falls back to ``default`` when not given. ``active`` names another profile than
    ``LORA_EDU_PROFILE``'s (to rebuild the set-up that made results of that profile).
    """
    chosen = profile() if active is None else active
    if chosen not in PROFILES:
        raise ValueError(f"unknown profile {chosen!r}; expected one of {', '.join(PROFILES)}")
    return {"smoke": smoke, "default": default, "full": default if full is None else full}[chosen]


def data_dir() -> Path:
    """The folder searched first for datasets: ``LORA_EDU_DATA`` if set, else the repository's
    ``data/`` folder (which may not exist in a non-editable install)."""
    env = os.environ.get("LORA_EDU_DATA", "").strip()
    return Path(env).expanduser().resolve() if env else REPO_ROOT / "data"


def results_dir() -> Path:
    """Where sweep results live: ``LORA_EDU_RESULTS``/``results`` if set, else the repository's
    ``data/results`` (committed default-profile results)."""
    env = os.environ.get("LORA_EDU_RESULTS", "").strip()
    return (Path(env).expanduser() if env else REPO_ROOT / "data") / "results"


def adapters_dir() -> Path:
    """Where the adapters kept for the paper figures live: ``LORA_EDU_RESULTS``/``adapters`` if
    set, else the repository's ``data/adapters`` (committed, float16)."""
    env = os.environ.get("LORA_EDU_RESULTS", "").strip()
    return (Path(env).expanduser() if env else REPO_ROOT / "data") / "adapters"


def cache_dir() -> Path:
    """Where cached checkpoints live (``LORA_EDU_CACHE``, default ``~/.cache/lora_edu``)."""
    env = os.environ.get("LORA_EDU_CACHE", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lora_edu"


def device() -> Any:
    """The torch device to use: ``LORA_EDU_DEVICE`` if set, else cuda, then mps, then cpu."""
    import torch

    forced = os.environ.get("LORA_EDU_DEVICE", "").strip().lower()  # "CUDA" works like "cuda"
    if forced:
        try:
            dev = torch.device(forced)
        except RuntimeError as err:
            raise ValueError(
                f"LORA_EDU_DEVICE={forced!r} is not a torch device ({err}); "
                "expected e.g. 'cpu', 'cuda', 'cuda:0' or 'mps'"
            ) from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"LORA_EDU_DEVICE={forced!r} but torch sees no CUDA device "
                f"(torch {torch.__version__}); unset LORA_EDU_DEVICE or install a CUDA build of torch"
            )
        mps = getattr(torch.backends, "mps", None)
        if dev.type == "mps" and not (mps is not None and mps.is_available()):
            raise ValueError(
                f"LORA_EDU_DEVICE={forced!r} but Apple's MPS backend is not available here "
                f"(torch {torch.__version__}); unset LORA_EDU_DEVICE or use 'cpu'"
            )
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")

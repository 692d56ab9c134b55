"""Benchmark datasets: where they are looked for, and (as the package grows) their loaders.

Search order for a dataset folder (``sst2/``, ``conll2003/``, ``mnist/``):

1. an explicit ``data_dir=`` argument;
2. the environment variable ``LORA_EDU_DATA``;
3. the repository's ``data/`` folder;
4. the Hugging Face Hub through ``datasets.load_dataset`` (only when not offline).
"""

from __future__ import annotations

import os
from pathlib import Path

from lora_edu.config import REPO_ROOT

#: The files each dataset folder must hold (the canonical distribution formats).
DATASET_FILES: dict[str, tuple[str, ...]] = {
    "sst2": ("train.tsv", "dev.tsv", "test.tsv"),
    "conll2003": ("train.txt", "valid.txt", "test.txt"),
    "mnist": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def search_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The folders searched for datasets, in order (duplicates removed)."""
    candidates: list[Path] = []
    if data_dir is not None:
        candidates.append(Path(data_dir).expanduser())
    env = os.environ.get("LORA_EDU_DATA", "").strip()
    if env:
        candidates.append(Path(env).expanduser())
    candidates.append(REPO_ROOT / "data")
    seen: list[Path] = []
    for path in candidates:
        path = path.resolve()
        if path not in seen:
            seen.append(path)
    return seen


def find_dataset(name: str, data_dir: str | os.PathLike | None = None) -> Path | None:
    """The first folder ``<dir>/<name>/`` holding all of ``DATASET_FILES[name]``, or None."""
    if name not in DATASET_FILES:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASET_FILES)}")
    for root in search_dirs(data_dir):
        folder = root / name
        if all((folder / f).is_file() for f in DATASET_FILES[name]):
            return folder
    return None


def locate_datasets(data_dir: str | os.PathLike | None = None) -> dict[str, Path | None]:
    """Each known dataset and the local folder it was found in (None when not found)."""
    return {name: find_dataset(name, data_dir) for name in DATASET_FILES}

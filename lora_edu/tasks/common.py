"""What several kinds of task share: a subset drawn with a fixed seed, the held-out ``-dev``
split used to choose learning rates, and the base-size encoder of the ``full`` profile.
Imports only ``config``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lora_edu.config import profile

#: The encoder of the text tasks at the ``full`` profile: base size (110 M parameters, 12 layers
#: of width 768), a BERT like MiniLM, so the same layer names (query, key, value, dense) and code
#: path; read from the Hub (or its cache) on first use. Smoke and default use the offline MiniLM.
FULL_TEXT_MODEL = "google-bert/bert-base-uncased"


def _subset(dataset, n: int | None, seed: int):
    if n is None or n >= len(dataset):
        return dataset
    return dataset.shuffle(seed=seed).select(range(n))


def _text_task_data(loader: Callable[[], Any], budget: Callable[[], dict]):
    def load():
        ds = loader()
        b = budget()
        # The training subset is drawn with a fixed seed (0), not the run's seed, so runs with
        # different seeds differ in initialisation and order only, not in which examples they see.
        return _subset(ds["train"], b["n_train"], 0), _subset(ds["validation"], b["n_eval"], 0)

    return load


#: Training examples held out of each task's training set for choosing learning rates (the
#: ``-dev`` tasks: ``sst2-dev``, ``conll2003-dev``, ``vit-dev``; ``matching-dev`` holds out the
#: ViT task's).
DEV_SIZE = {
    "sst2": {"smoke": 64, "default": 1000, "full": 1000},
    "conll2003": {"smoke": 48, "default": 1000, "full": 1000},
    "vit": {"smoke": 64, "default": 288, "full": 288},
}


def _dev_data(
    loader: Callable[[], Any], budget: Callable[[], dict], dev_size: dict[str, int]
) -> Callable[[], tuple[Any, Any]]:
    """A task's data for choosing learning rates: the same training subset as the task itself
    (the first ``n_train`` of the training set shuffled with seed 0), scored on the next
    ``dev_size`` training examples, never on the evaluation set that the task's results report.
    Where the task trains on the whole training set (``vit``; ``full``), those examples are
    taken out of it, so the pilot trains on slightly fewer."""

    def load():
        b, n_dev = budget(), dev_size[profile()]
        shuffled = loader()["train"].shuffle(seed=0)
        n_train = b["n_train"] if b["n_train"] is not None else len(shuffled) - n_dev
        return shuffled.select(range(n_train)), shuffled.select(range(n_train, n_train + n_dev))

    return load

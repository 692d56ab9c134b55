"""What several kinds of task share: a subset drawn with a fixed seed, the held-out ``-dev``
split used to choose learning rates, and the base-size encoder of the ``full`` profile.
Imports only ``config``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lora_edu.config import cache_dir, profile

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


def _cached_classifier(
    stem: str, train: Any, eval_: Any, *, progress: bool = True, **kwargs: Any
) -> tuple[Any, Any, dict[str, Any]]:
    """A sentence classifier fully fine-tuned once (``finetune_text_classifier(train, eval_,
    method="full", seed=0, **kwargs)``) and cached under ``LORA_EDU_CACHE`` as ``stem``
    (.safetensors, with the run's record in .json); later calls only read it. Returns
    (tokenizer, classifier in eval mode with gradients off, its record)."""
    import json

    import safetensors.torch

    from lora_edu.models import load_text_model
    from lora_edu.train import finetune_text_classifier

    weights, meta = cache_dir() / f"{stem}.safetensors", cache_dir() / f"{stem}.json"
    tokenizer, model = load_text_model("sequence", 2, kwargs.get("model", "minilm"), seed=0)
    if weights.is_file() and meta.is_file():
        safetensors.torch.load_model(model, weights)
        return tokenizer, model.eval().requires_grad_(False), json.loads(meta.read_text())
    record, trained = finetune_text_classifier(
        train, eval_, method="full", seed=0, progress=progress, return_model=True, **kwargs
    )
    trained = trained.cpu().eval()
    weights.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_model(trained, weights)
    meta.write_text(json.dumps({k: v for k, v in record.items() if k != "history"}))
    return tokenizer, trained.requires_grad_(False), record

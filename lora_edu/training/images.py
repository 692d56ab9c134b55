"""Fine-tuning TinyViT on images (``finetune_vit``), and the MNIST-pretrained TinyViT every image
task starts from (``pretrained_vit``: trained once with ``finetune_vit``, then read from the
cache).

``pretrained_vit`` lives here, beside the training it needs, and not in ``models.py``: models
define networks and read or write their weights (``models.save_tinyvit``/``load_tinyvit``), they
never train, so the arrows between ``models`` and the training code point one way only.

ARCHITECTURE notes: imports ``config``, ``defaults``, ``lora`` (``LoRAConfig``), ``models``
(TinyViT, image arrays, resizing, new heads, the weight files), ``data`` (the pretraining data,
on use) and ``training.loop``, ``run``; imported by ``lora_edu.train`` (which re-exports it) and
``lora_edu`` (``pretrained_vit``). Never imports another task module.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import torch
from torch import nn

from lora_edu.config import cache_dir
from lora_edu.config import device as default_device
from lora_edu.defaults import TASK_DEFAULTS
from lora_edu.lora import LoRAConfig
from lora_edu.models import (
    TinyViT,
    image_arrays,
    load_tinyvit,
    replace_head,
    resize_images,
    save_tinyvit,
)
from lora_edu.training.loop import Collate, _accuracy_evaluator, _check_method, seed_everything
from lora_edu.training.run import LoopSettings, TrainSettings, _run, lora_or_default


def finetune_vit(
    train: Any,
    eval: Any,
    *,
    base: TinyViT | None = None,
    method: str = "lora",
    lora: LoRAConfig | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int = 128,
    seed: int = 0,
    device: Any = None,
    progress: bool = True,
    return_model: bool = False,
    **loop: Any,
) -> dict[str, Any] | tuple[dict[str, Any], nn.Module]:
    """Fine-tune a copy of ``base`` (default: ``pretrained_vit()``, trained on MNIST) with a
    fresh ``classifier`` for the labels of ``train``, and report accuracy on ``eval``.

    ``train``/``eval``: a ``datasets.Dataset`` with columns ``image`` (H×W or C×H×W, uint8 or
    float in [0, 1]) and ``label``, or a pair ``(images, labels)``; ``eval=None`` skips
    evaluation. ``base`` itself is not modified. Other arguments (``lora=LoRAConfig(...)``, the
    loop's keywords) as in ``finetune_text_classifier``.

    Defaults (``defaults.TASK_DEFAULTS["image"]``), chosen by the ViT learning-rate pilot on
    held-out training images (MNIST-pretrained TinyViT adapted to 1,150 of scikit-learn's 8×8
    digits): ``lr=None`` → probe 3e-2, BitFit 1e-2, LoRA 2e-3, full fine-tuning 3e-4;
    ``lora=None`` → r = 8, α = 16 on the four attention projections (query, key, value,
    output); ``epochs=None`` → 20, about 360 steps of 64 images on that set: on a larger one,
    fewer epochs give as many steps. The new head trains at the method's rate.
    """
    defaults = TASK_DEFAULTS["image"]
    loop_settings = LoopSettings.from_keywords(
        "finetune_vit()", defaults.loop(method, loop), defaults.target_modules
    )
    lora = lora_or_default(lora, defaults.target_modules)
    _check_method(method)
    splits = [image_arrays(train)] + ([] if eval is None else [image_arrays(eval)])
    label_feature = getattr(train, "features", {}).get("label")
    num_labels = getattr(label_feature, "num_classes", None) or 1 + max(
        int(labels.max()) for _, labels in splits
    )
    if base is None:
        base = pretrained_vit(progress=progress)
    # Images of another size (e.g. 8×8 digits for a ViT trained on 28×28 MNIST) are resized.
    size = base.config["image_size"]
    resized_from = None
    for i, (images, labels) in enumerate(splits):
        if images.shape[-2:] != (size, size):
            resized_from = list(images.shape[-2:])
            splits[i] = (resize_images(images, size), labels)
    seed_everything(seed)
    net = replace_head(base, num_labels, seed=seed)
    device = torch.device(device) if device is not None else default_device()

    def collate_for(images: np.ndarray, labels: np.ndarray) -> Collate:
        # The whole image array goes to the device once; batches are slices of it.
        images_t, labels_t = torch.from_numpy(images).to(device), torch.from_numpy(labels)
        return lambda indices: ({"images": images_t[indices.to(device)]}, labels_t[indices])

    evaluate = None
    if len(splits) == 2:
        evaluate = _accuracy_evaluator(len(splits[1][1]), collate_for(*splits[1]), 2 * batch_size)

    settings = TrainSettings(
        method=method,
        lora=lora,
        epochs=defaults.epochs if epochs is None else epochs,
        lr=lr,
        default_lr=defaults.lr,
        batch_size=batch_size,
        seed=seed,
        device=device,
        progress=progress,
        return_model=return_model,
        loop=loop_settings,
    )
    return _run(
        "image-classification",
        "tinyvit",
        net,
        len(splits[0][1]),
        collate_for(*splits[0]),
        evaluate,
        {
            "max_length": None,
            "metric_name": "accuracy",
            "num_labels": num_labels,
            "n_eval": len(splits[1][1]) if len(splits) == 2 else None,
            "resized_from": resized_from,
            "base": getattr(base, "pretrain_record", None),
            "vit_config": dict(net.config),
        },
        settings,
    )


# --------------------------------------------------------------------------- pretraining


def image_classifier_verdicts(
    model: nn.Module, images: np.ndarray, labels: np.ndarray, *, batch_size: int = 256
) -> np.ndarray:
    """One boolean per image, in order: does ``model`` (a ``TinyViT`` with its task's head) name
    its label? Images of another size than the model's are resized as ``finetune_vit`` resizes
    them; the model is put in eval mode. What a paired test compares between two models."""
    images, labels = np.asarray(images), np.asarray(labels)  # uint8 or float in [0, 1]
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    size = model.config["image_size"]
    if images.shape[-2:] != (size, size):
        images = resize_images(images, size)
    device = next(model.parameters()).device
    images_t, labels_t = torch.from_numpy(images).to(device), torch.from_numpy(labels)

    def collate(indices: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return {"images": images_t[indices.to(device)]}, labels_t[indices]

    correct = _accuracy_evaluator(len(labels), collate, batch_size)(model)["eval_correct"]
    return np.array([c == "1" for c in correct])


def _fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
    digest = hashlib.sha1(np.ascontiguousarray(images).tobytes())
    digest.update(np.ascontiguousarray(labels).tobytes())
    return digest.hexdigest()[:12]


def pretrained_vit(
    source: str = "mnist",
    *,
    config: dict | None = None,
    epochs: int = 10,
    seed: int = 0,
    lr: float = 2e-3,
    batch_size: int = 128,
    max_train: int | None = None,
    cache: bool = True,
    progress: bool = True,
    train_data: Any = None,
    eval_data: Any = None,
) -> TinyViT:
    """A ``TinyViT(**config)`` trained from scratch on ``source`` (full training, AdamW at ``lr``,
    through ``finetune_vit``), cached as safetensors under ``cache_dir()``
    (``models.save_tinyvit``) so later calls only read the data and the file.

    The data is ``train_data`` (a Dataset with ``image``/``label`` or a pair ``(images, labels)``)
    and ``eval_data`` (optional), else ``lora_edu.data.load_<source>(seed=seed)``'s ``train`` and
    ``test`` splits. ``max_train`` keeps the first ``max_train`` training images. The cache file
    name holds a hash of everything that changes the weights: config, source, epochs, seed, lr,
    batch size and a fingerprint of the data arrays (so different data never share a file).
    The returned model is on the CPU in eval mode; ``model.pretrain_record`` holds a summary of
    the training run (accuracy on the held-out split, train seconds, device).
    """
    defaults = TinyViT().config
    unknown = set(config or {}) - set(defaults)
    if unknown:
        raise ValueError(
            f"unknown TinyViT config keys {sorted(unknown)}; expected some of {list(defaults)}"
        )
    config = {**defaults, **(config or {})}
    if train_data is None:
        from lora_edu import data as data_module

        loader = getattr(data_module, f"load_{source}", None)
        if loader is None:
            raise ValueError(
                f"no loader lora_edu.data.load_{source}() for source={source!r}; pass "
                "train_data=(images, labels) or use source='mnist'"
            )
        splits = loader(seed=seed)
        train_data = splits["train"]
        if eval_data is None and "test" in splits:
            eval_data = splits["test"]
    train_data = image_arrays(train_data)
    if max_train is not None:
        train_data = (train_data[0][:max_train], train_data[1][:max_train])
    eval_data = None if eval_data is None else image_arrays(eval_data)
    key = dict(config=config, source=source, epochs=epochs, seed=seed, lr=lr, batch_size=batch_size)
    key["train_data"] = _fingerprint(*train_data)
    key["eval_data"] = None if eval_data is None else _fingerprint(*eval_data)
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    path = cache_dir() / f"tinyvit-{source}-e{epochs}-s{seed}-{digest}.safetensors"

    if cache and path.is_file():
        return load_tinyvit(path)

    with torch.random.fork_rng(devices=[]):  # same seed → same initial weights; global RNG kept
        torch.manual_seed(seed)
        model = TinyViT(**config)
    record, model = finetune_vit(
        train_data,
        eval_data,
        base=model,
        method="full",
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        progress=progress,
        return_model=True,
    )
    model = model.cpu().eval()
    summary = {
        k: record[k]
        for k in ("metric_name", "metric", "n_train", "n_eval", "train_seconds", "device")
    }
    model.pretrain_record = {**summary, "source": source, "epochs": epochs, "seed": seed}
    if cache:
        save_tinyvit(model, path, {"key": key})
    return model

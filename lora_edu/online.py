"""Online learning on a drifting stream (the guide's 8.3.3): the data arrive in periods whose
distribution drifts, and the model learns them in order, without going back.

The stream (``rotated_stream``): MNIST digits the pretrained TinyViT never trained on, rotated by
a larger angle in each period (period 0 is upright: what the model already knows). Three ways to
follow it (``follow_stream``):

* ``"lora"``: **one adapter, updated continuously**: LoRA on the attention projections (and the
  head) keeps training, period after period;
* ``"adapter-per-period"``: **a new adapter per period**, each trained on its period alone from
  the frozen base, and a **router** that sends each test image to one adapter: the period whose
  mean base-model feature (the CLS vector before the head) is nearest (``nearest_period``);
* ``"full"``: full fine-tuning, updated continuously.

After each period every method is scored on the held-out images of **every** period, so the
result is a matrix: row ``t`` (after period ``t``; row 0 before any training), column ``j`` (the
images of period ``j``). Above the diagonal: what it cannot know yet; on it: what it just
learned; below it: what it kept of earlier periods (forgetting: the drop from the diagonal).

ARCHITECTURE notes: imports ``lora`` (``LoRAConfig``), ``defaults``, ``training.loop`` (``fit``,
``prepare_model``, ``predict``); numpy, scipy (rotation) and torch. Imported by notebooks only.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from lora_edu.defaults import VIT_ATTENTION
from lora_edu.lora import LoRAConfig
from lora_edu.training.loop import Collate, fit, predict, prepare_model

#: What ``follow_stream`` knows how to do.
STREAM_METHODS = ("lora", "adapter-per-period", "full")


@dataclass(frozen=True)
class Period:
    """One period of the stream: its rotation ``angle`` (degrees), training and held-out images
    (uint8, ``(N, 28, 28)``) and labels."""

    angle: float
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def rotate_images(images: np.ndarray, angle: float) -> np.ndarray:
    """``images (N, H, W)`` (uint8) rotated by ``angle`` degrees about their centre, same size,
    corners filled with 0 (bilinear interpolation, ``scipy.ndimage.rotate``)."""
    from scipy.ndimage import rotate

    if angle == 0:
        return images.copy()
    turned = rotate(images.astype(np.float32), angle, axes=(2, 1), reshape=False, order=1)
    return np.clip(np.rint(turned), 0, 255).astype(np.uint8)


def rotated_stream(
    images: np.ndarray,
    labels: np.ndarray,
    angles: Sequence[float],
    n_train: int,
    n_test: int,
    seed: int = 0,
) -> list[Period]:
    """Periods of disjoint images drawn (shuffled with ``seed``) from ``images``/``labels``, the
    ``k``-th rotated by ``angles[k]``: period 0 keeps ``n_test`` images to score only (it is not
    trained on), every later period ``n_train`` to learn and ``n_test`` to score."""
    need = n_test + (len(angles) - 1) * (n_train + n_test)
    if need > len(images):
        raise ValueError(
            f"{len(angles)} periods of {n_train} training and {n_test} held-out images need "
            f"{need} images; got {len(images)}"
        )
    order = np.random.default_rng(seed).permutation(len(images))
    periods, start = [], 0
    for k, angle in enumerate(angles):
        n = n_test if k == 0 else n_train + n_test
        take = order[start : start + n]
        start += n
        turned = rotate_images(np.asarray(images)[take], angle)
        kept = np.asarray(labels)[take].astype(np.int64)
        periods.append(Period(float(angle), turned[: n - n_test], kept[: n - n_test],
                              turned[n - n_test :], kept[n - n_test :]))  # fmt: skip
    return periods


def _collate(images: np.ndarray, labels: np.ndarray) -> Collate:
    images_t, labels_t = torch.from_numpy(images), torch.from_numpy(labels)
    return lambda indices: ({"images": images_t[indices]}, labels_t[indices])


def _predictions(model: nn.Module, images: np.ndarray) -> np.ndarray:
    dummy = np.zeros(len(images), dtype=np.int64)
    batches = predict(model, len(images), _collate(images, dummy), 256, torch.device("cpu"))
    return torch.cat([p for p, _ in batches]).numpy()


def features(model: nn.Module, images: np.ndarray) -> np.ndarray:
    """What ``model``'s head sees for each image: the normalised CLS vector ``(N, dim)``."""
    seen: list[torch.Tensor] = []
    hook = model.classifier.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    try:
        _predictions(model, images)
    finally:
        hook.remove()
    return torch.cat(seen).detach().numpy()


def nearest_period(centroids: np.ndarray, feats: np.ndarray) -> np.ndarray:
    """For each row of ``feats``, the index of the nearest row of ``centroids`` (Euclidean)."""
    distances = ((feats[:, None, :] - centroids[None, :, :]) ** 2).sum(-1)
    return distances.argmin(1)


def _train(model: nn.Module, period: Period, lr: float, epochs: int, batch_size: int,
           seed: int) -> None:  # fmt: skip
    fit(model, len(period.train_labels), _collate(period.train_images, period.train_labels),
        None, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
        device=torch.device("cpu"), progress=False)  # fmt: skip


def follow_stream(
    base: nn.Module,
    periods: Sequence[Period],
    method: str,
    lr: float,
    *,
    epochs: int = 5,
    batch_size: int = 32,
    seed: int = 0,
    lora: LoRAConfig | None = None,
) -> dict[str, Any]:
    """Learn ``periods[1:]`` in order with ``method`` (``STREAM_METHODS``) from ``base`` (left
    untouched), scoring every period's held-out images before training and after each period.

    Returns ``accuracy`` (``(P, P)``: row ``t`` after period ``t``, row 0 before any training;
    column ``j``: period ``j``'s held-out images), ``correct`` (the same, one boolean array per
    cell, for paired tests) and, for ``"adapter-per-period"``, ``router_accuracy`` (row ``t``:
    the share of each period's images the router sent to their own period's adapter, among the
    adapters trained so far, period 0 going to the base) and ``oracle_accuracy`` (row ``t``:
    each period scored by its own adapter, as a router that always knew the period would; NaN
    for periods not yet trained)."""
    if method not in STREAM_METHODS:
        raise ValueError(f"method must be one of {', '.join(STREAM_METHODS)}, got {method!r}")
    if len(periods) < 2:
        raise ValueError(f"a stream needs period 0 and at least one more; got {len(periods)}")
    lora = lora if lora is not None else LoRAConfig(VIT_ATTENTION, r=8)
    torch.manual_seed(seed)
    tests = [(p.test_images, p.test_labels) for p in periods]

    def score(predict_fn: Any) -> list[np.ndarray]:
        return [predict_fn(images) == labels for images, labels in tests]

    frozen = copy.deepcopy(base).eval()
    correct = [score(lambda x: _predictions(frozen, x))]
    routed: list[list[float]] = [[1.0] * len(periods)]
    oracle: list[list[float]] = [[float(c.mean()) for c in correct[0]]]
    if method in ("lora", "full"):
        model = copy.deepcopy(base)
        prepare_model(model, method, lora if method == "lora" else None)
        for k, period in enumerate(periods[1:], start=1):
            _train(model, period, lr, epochs, batch_size, seed + k)
            correct.append(score(lambda x: _predictions(model, x)))
        routed = oracle = []
    else:
        experts: list[nn.Module] = [frozen]  # period 0: the base itself
        test_features = [features(frozen, images) for images, _ in tests]  # the base's, once
        centroids = [test_features[0].mean(0)]  # period 0: its held-out images (no training set)
        for k, period in enumerate(periods[1:], start=1):
            expert = copy.deepcopy(base)
            prepare_model(expert, "lora", lora)
            _train(expert, period, lr, epochs, batch_size, seed + k)
            experts.append(expert)
            centroids.append(features(frozen, period.train_images).mean(0))

            # Each test set is routed once; its predictions and the router's accuracy share it.
            stacked = np.stack(centroids)
            choices = [nearest_period(stacked, test_features[j]) for j in range(len(tests))]
            row = []
            for (images, _), choice in zip(tests, choices, strict=True):
                preds = np.empty(len(images), dtype=np.int64)
                for e in np.unique(choice):
                    preds[choice == e] = _predictions(experts[e], images[choice == e])
                row.append(preds)
            correct.append([preds == labels for preds, (_, labels) in zip(row, tests, strict=True)])
            routed.append([float((choice == j).mean()) if j <= k else float("nan")
                           for j, choice in enumerate(choices)])  # fmt: skip
            oracle.append([
                float((_predictions(experts[j], images) == labels).mean()) if j <= k
                else float("nan")
                for j, (images, labels) in enumerate(tests)
            ])  # fmt: skip
    result: dict[str, Any] = {
        "method": method, "lr": lr, "seed": seed, "epochs": epochs,
        "angles": [p.angle for p in periods], "correct": correct,
        "accuracy": np.array([[c.mean() for c in row] for row in correct]),
    }  # fmt: skip
    if routed:
        result["router_accuracy"] = np.array(routed)
        result["oracle_accuracy"] = np.array(oracle)
    return result

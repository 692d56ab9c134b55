"""Image tasks on the MNIST-pretrained TinyViT: ``vit`` (adapted to scikit-learn's 8×8 digits,
other writers; ``vit-dev`` for its pilot), ``detection`` (single-object localisation: one digit
on a 56×56 canvas, a box-and-class head) and ``matching`` (a CLIP-style dual encoder with
MiniLM-L6, zero-shot on held-out phrasings) and ``caption`` (clips of moving digits captioned
by SmolLM2 reading the TinyViT's features), each with a ``-dev`` twin, and their presets
(notebooks 08, 17 and 20). Imports ``tasks.common``, ``tasks.registry`` and ``presets``; data,
models and training on use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lora_edu.config import by_profile
from lora_edu.defaults import LLAMA_QV, QV, VIT_ATTENTION, VIT_ATTENTION_MLP
from lora_edu.presets import (
    former_lr_grid,
    head_rate_pilot_grid,
    headline_grid,
    lora_runs,
    lr_pilot_grid,
    tied_rates_grid,
)
from lora_edu.tasks.common import DEV_SIZE, _dev_data, _subset
from lora_edu.tasks.registry import TaskSpec, register_pilot, register_presets, register_task


def _vit_budget() -> dict[str, Any]:
    # pretrain_*: the source-task training of TinyViT on MNIST (cached after the first call).
    return by_profile(
        smoke={"n_train": 128, "n_eval": 64, "epochs": 1, "batch_size": 64,
               "pretrain_epochs": 1, "pretrain_max_train": 512},
        default={"n_train": None, "n_eval": None, "epochs": 20, "batch_size": 64,
                 "pretrain_epochs": 10, "pretrain_max_train": None},
        full={"n_train": None, "n_eval": None, "epochs": 40, "batch_size": 64,
              "pretrain_epochs": 30, "pretrain_max_train": None},
    )  # fmt: skip


def _digits_data(budget: Callable[[], dict]) -> Callable[[], tuple[Any, Any]]:
    """The shifted target task: scikit-learn's 8×8 digits (other writers, other resolution),
    upsampled by ``finetune_vit`` (or ``finetune_matcher``) to the 28×28 input of the
    MNIST-pretrained TinyViT; ``budget``'s ``n_train`` of the training split, ``n_eval`` of the
    test split."""

    def load():
        from lora_edu.data import load_digits

        ds, b = load_digits(seed=0), budget()
        return _subset(ds["train"], b["n_train"], 0), _subset(ds["test"], b["n_eval"], 0)

    return load


def _vit_finetune(train_ds, eval_ds, **kwargs):
    from lora_edu.train import finetune_vit
    from lora_edu.training.images import pretrained_vit

    b = _vit_budget()
    base = pretrained_vit(
        epochs=b["pretrain_epochs"], max_train=b["pretrain_max_train"], progress=False
    )
    return finetune_vit(train_ds, eval_ds, base=base, **kwargs)


def _detection_budget() -> dict[str, Any]:
    """Detection: canvases for training, held out of training (the ``-dev`` task's evaluation, for
    choosing learning rates) and for evaluation (from MNIST's test part); the image tower is the
    ViT task's MNIST-pretrained TinyViT."""
    vit = _vit_budget()
    return by_profile(
        smoke={"n_train": 64, "n_dev": 32, "n_eval": 32, "epochs": 1, "batch_size": 32},
        default={"n_train": 4000, "n_dev": 1000, "n_eval": 1000, "epochs": 10,
                 "batch_size": 64},
    ) | {k: vit[k] for k in ("pretrain_epochs", "pretrain_max_train")}  # fmt: skip


def _mnist_parts(dev: bool) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
    """(training images, labels) and the evaluation pair: for ``dev`` the next ``n_dev`` training
    images, else the first ``n_eval`` of MNIST's test part."""
    from lora_edu.data import load_mnist
    from lora_edu.models import image_arrays

    b = _detection_budget()
    ds = load_mnist(seed=0)
    train_images, train_labels = image_arrays(ds["train"])
    if dev:
        n, k = b["n_train"], b["n_dev"]
        return (train_images[:n], train_labels[:n]), (
            train_images[n : n + k],
            train_labels[n : n + k],
        )
    test_images, test_labels = image_arrays(ds["test"])
    return (train_images[: b["n_train"]], train_labels[: b["n_train"]]), (
        test_images[: b["n_eval"]],
        test_labels[: b["n_eval"]],
    )


def _detection_data(dev: bool) -> Callable[[], tuple[Any, Any]]:
    def load():
        from lora_edu.detection import place_digits

        (train_x, train_y), (eval_x, eval_y) = _mnist_parts(dev)
        b = _detection_budget()
        n_eval = b["n_dev"] if dev else b["n_eval"]
        return (
            place_digits(train_x, train_y, b["n_train"], seed=0),
            place_digits(eval_x, eval_y, n_eval, seed=1),
        )

    return load


def _pretrained_image_tower() -> Any:
    from lora_edu.training.images import pretrained_vit

    b = _detection_budget()
    return pretrained_vit(
        epochs=b["pretrain_epochs"], max_train=b["pretrain_max_train"], progress=False
    )


def _detection_finetune(train_ds, eval_ds, **kwargs):
    from lora_edu.detection import finetune_detector

    return finetune_detector(train_ds, eval_ds, base=_pretrained_image_tower(), **kwargs)


def _matching_budget() -> dict[str, Any]:
    """Image–text matching on the ViT task's shifted images (scikit-learn's 8×8 digits, other
    writers, upsampled to the MNIST-pretrained image tower's 28×28): on MNIST itself the
    pretrained tower already separates the digits, and in a first trial LoRA (four learning
    rates) and full fine-tuning matched all 1,000 held-out images zero-shot, leaving nothing to
    compare."""
    vit = _vit_budget()
    return by_profile(
        smoke={"n_train": 64, "n_eval": 32, "epochs": 1, "batch_size": 32},
        default={"n_train": None, "n_eval": None, "epochs": 10, "batch_size": 64},
        full={"n_train": None, "n_eval": None, "epochs": 20, "batch_size": 64},
    ) | {k: vit[k] for k in ("pretrain_epochs", "pretrain_max_train")}  # fmt: skip


def _matching_finetune(train_ds, eval_ds, **kwargs):
    from lora_edu.matching import finetune_matcher

    return finetune_matcher(train_ds, eval_ds, image_base=_pretrained_image_tower(), **kwargs)


def _caption_budget() -> dict[str, Any]:
    """Captioning clips of moving MNIST digits (``lora_edu.captioning``): clips for training
    drawn from the MNIST training images, for evaluation from the held-out MNIST images (the
    ``-dev`` task: from ``CAPTION_DEV_DIGITS`` training images kept out of the training clips).
    In ``default`` one pass over 2,000 clips at batch 8 is 250 steps, about 4.5 minutes of
    SmolLM2 on this project's 2-core CPU."""
    vit = _vit_budget()
    return by_profile(
        smoke={"n_train": 24, "n_eval": 12, "epochs": 1, "batch_size": 8},
        default={"n_train": 2000, "n_eval": 200, "epochs": 1, "batch_size": 8},
        full={"n_train": 8000, "n_eval": 1000, "epochs": 2, "batch_size": 16},
    ) | {k: vit[k] for k in ("pretrain_epochs", "pretrain_max_train")}  # fmt: skip


#: MNIST training images kept out of the captioner's training clips: the pilot's clips use them.
CAPTION_DEV_DIGITS = 1000


def _caption_data(dev: bool) -> Callable[[], tuple[Any, Any]]:
    def load():
        from lora_edu.captioning import moving_digit_clips
        from lora_edu.data import load_mnist
        from lora_edu.models import image_arrays

        b, ds = _caption_budget(), load_mnist(seed=0)
        images, labels = image_arrays(ds["train"])
        cut = len(images) - CAPTION_DEV_DIGITS
        train = moving_digit_clips(images[:cut], labels[:cut], b["n_train"], seed=0)
        held = (images[cut:], labels[cut:]) if dev else image_arrays(ds["test"])
        return train, moving_digit_clips(*held, b["n_eval"], seed=1)

    return load


def _caption_finetune(train, eval, **kwargs):
    from lora_edu.captioning import finetune_captioner

    return finetune_captioner(train, eval, image_base=_pretrained_image_tower(), **kwargs)


def _load_digits():
    from lora_edu.data import load_digits

    return load_digits(seed=0)


register_task(
    "vit",
    lambda: TaskSpec("vit", "accuracy", _digits_data(_vit_budget), _vit_finetune, _vit_budget),
)
register_task(
    "vit-dev",
    lambda: TaskSpec(
        "vit-dev",
        "accuracy",
        _dev_data(_load_digits, _vit_budget, DEV_SIZE["vit"]),
        _vit_finetune,
        _vit_budget,
    ),  # fmt: skip
)
# Each with a -dev twin whose evaluation examples are held out of the training images.
_WITH_DEV_TWINS = (
    ("detection", "accuracy_at_iou", _detection_data, _detection_finetune, _detection_budget),
    ("caption", "content_accuracy", _caption_data, _caption_finetune, _caption_budget),
)
for _stem, _metric, _data, _finetune, _budget in _WITH_DEV_TWINS:
    for _dev in (False, True):
        _name = f"{_stem}{'-dev' * _dev}"
        register_task(
            _name,
            lambda name=_name, dev=_dev, m=_metric, d=_data, f=_finetune, b=_budget: TaskSpec(
                name, m, d(dev), f, b
            ),
        )
register_task(
    "matching",
    lambda: TaskSpec(
        "matching",
        "zero_shot_accuracy",
        _digits_data(_matching_budget),
        _matching_finetune,
        _matching_budget,
    ),  # fmt: skip
)
register_task(
    "matching-dev",
    lambda: TaskSpec(
        "matching-dev",
        "zero_shot_accuracy",
        _dev_data(_load_digits, _matching_budget, DEV_SIZE["vit"]),
        _matching_finetune,
        _matching_budget,
    ),  # fmt: skip
)


# ------------------------------------------------------------------ the image tasks' presets

#: The learning-rate pilots (each on its ``-dev`` twin). Every grid whose best sat at an end was
#: extended beyond it: the ViT's linear probe twice and BitFit once; detection's three arms, two
#: rates each (a box head and its backbone want higher rates); matching's LoRA twice and its full
#: fine-tuning once, upward. Matching runs on the ViT task's 8×8 digits, so its grids sit around
#: the ViT pilot's choices.
IMAGE_PILOT_LRS: dict[str, dict[str, tuple[float, ...]]] = {
    "vit": {
        "lora": (1e-3, 2e-3, 5e-3),
        "full": (5e-5, 1e-4, 3e-4, 1e-3),
        "head": (1e-3, 3e-3, 1e-2, 3e-2, 1e-1),
        "bitfit": (3e-4, 1e-3, 3e-3, 1e-2, 3e-2),
    },
    "detection": {
        "lora": (1e-3, 2e-3, 5e-3, 1e-2, 2e-2),
        "full": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2),
        "head": (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1),
        # the confound of plain LoRA: full fine-tuning also trains the resized position
        # embedding and the MLPs; these arms add each to LoRA on attention
        "lora-pos": (2e-3, 5e-3, 1e-2, 2e-2),
        "lora-mlp": (2e-3, 5e-3, 1e-2, 2e-2),
    },
    "matching": {
        "lora": (5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2),
        "full": (3e-5, 1e-4, 3e-4, 1e-3, 3e-3),
        "head": (1e-3, 3e-3, 1e-2, 3e-2),
    },
}
#: LoRA's targets in each headline (r = 8, α = 16): the ViT's attention projections; matching
#: adapts query and value in both towers.
IMAGE_LORA_TARGETS = {"vit": VIT_ATTENTION, "detection": VIT_ATTENTION, "matching": QV}
#: The ViT's rank sweep (``default``/``full``), on the attention projections and with the MLP.
VIT_RANKS = (1, 2, 4, 8, 16)


#: The captioner's pilot (``caption-dev``, two seeds per rate): the projection alone, and with
#: LoRA r = 8 in the language model on q, v or on every linear layer (the projection at the same
#: rate). Around the causal LM's LoRA rate, lower for every linear layer, higher for the
#: projection alone; every grid was extended upward while its first seed's best sat at the top.
CAPTION_PILOT_LRS: dict[str, tuple[float, ...]] = {
    "head": (1e-3, 3e-3, 1e-2, 3e-2, 1e-1),
    "lora": (1e-3, 2e-3, 5e-3, 1e-2, 2e-2),
    "lora-all-linear": (5e-4, 1e-3, 2e-3, 5e-3),
}
register_pilot("caption", CAPTION_PILOT_LRS, lora_targets=LLAMA_QV, seeds=(0, 1))
register_presets(
    "caption",
    {
        "headline": headline_grid("caption"),
        "tied-rates": tied_rates_grid("caption", arms=tuple(CAPTION_PILOT_LRS)),
    },
)
register_presets("caption-dev", {"lr-pilot": lr_pilot_grid("caption")})

for _task, _rates in IMAGE_PILOT_LRS.items():
    register_pilot(_task, _rates, lora_targets=IMAGE_LORA_TARGETS[_task])
    register_presets(_task, {"headline": headline_grid(_task)})
    register_presets(f"{_task}-dev", {"lr-pilot": lr_pilot_grid(_task)})
register_presets("vit-dev", {"head-rate-pilot": head_rate_pilot_grid("vit")})
register_presets(
    "vit",
    {
        "former-lr": former_lr_grid("vit"),
        "ranks": lambda: lora_runs(
            by_profile(smoke=[1, 8], default=list(VIT_RANKS)),
            targets=[VIT_ATTENTION, VIT_ATTENTION_MLP],
        ),
    },
)

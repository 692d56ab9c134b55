"""Image–text matching, CLIP style: a digit image and a sentence about a digit meet in one
embedding space, and a new phrasing classifies images with no training ("zero-shot").

    tokenizer, model = dual_encoder(pretrained_vit())      # TinyViT + MiniLM, two projections
    apply_lora(model, LoRAConfig(["query", "value"], r=8))  # LoRA in both towers
    ... train with contrastive_loss, score with zero_shot_accuracy; or all of it in one call:
    record = finetune_matcher(train, eval, image_base=pretrained_vit(),
                              lora=LoRAConfig(["query", "value"], r=8))

**The towers.** The image tower is the MNIST-pretrained TinyViT (its CLS token), the text tower
MiniLM-L6 (the mean of its token states). Each ends in a linear projection to a shared space of
``EMBED_DIM`` numbers; the two projections are ``model.classifier.image`` and ``.text``, the
"head" every method trains, with the learned temperature (``.temperature``: similarities are
cosines times ``exp(log_scale)``, CLIP's initial 1/0.07).

**The loss.** In a batch of B images and their B captions, the similarity matrix ``(B, B)`` is read
row by row (which caption fits this image?) and column by column (which image fits this caption?)
with a cross-entropy each, CLIP's symmetric loss. With ten classes a batch holds several images of
the same digit, so every caption of the right digit counts as a correct match: the target of a row
is spread evenly over them (without this, the loss would push apart two images of a seven).

**Zero-shot.** Held-out phrasings (``EVAL_TEMPLATES``, never seen in training) are embedded once per
digit; an image is classified as the digit whose caption embedding is nearest.

ARCHITECTURE notes: a task module on top of the training side: imports ``defaults``, ``lora``
(``LoRAConfig``), ``models`` (the text tower, image arrays, resizing) and ``training.loop``,
``training.run`` (``finetune_matcher`` trains through ``_run`` with one ``TrainSettings``);
imported by ``sweep`` and notebook 17. The pretrained image tower comes from the caller
(``lora_edu.pretrained_vit``), so this module never pretrains.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lora_edu.defaults import FORMER_LR
from lora_edu.lora import LoRAConfig
from lora_edu.models import image_arrays, load_text_model, resize_images
from lora_edu.training.loop import _check_method, seed_everything
from lora_edu.training.run import LoopSettings, TrainSettings, _run, lora_or_default

#: The size of the shared embedding space.
EMBED_DIM = 64
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
#: Captions seen in training ({name}: "seven", {d}: "7").
TRAIN_TEMPLATES = (
    "a handwritten {name}",
    "the digit {d}",
    "a picture of the number {name}",
    "the number {d} written by hand",
    "an image of a {name}",
)
#: Held-out phrasings, used only to classify zero-shot.
EVAL_TEMPLATES = ("a scan of a handwritten {d}", "this is the digit {name}")


def caption(label: int, template: str) -> str:
    """``template`` filled for digit ``label``."""
    return template.format(name=DIGIT_NAMES[label], d=label)


class Temperature(nn.Module):
    """CLIP's learned temperature: ``log_scale`` starts at log(1/0.07); similarities are
    multiplied by ``exp(log_scale)`` (capped at 100)."""

    def __init__(self) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, similarities: torch.Tensor) -> torch.Tensor:
        return self.log_scale.exp().clamp(max=100) * similarities


class DualEncoder(nn.Module):
    """Two towers and their projections: ``forward(images, input_ids, attention_mask)`` → the
    similarity logits ``(B_images, B_texts)``; ``embed_images``, ``embed_texts`` → unit vectors."""

    def __init__(self, image_tower: nn.Module, text_tower: nn.Module, embed_dim: int = EMBED_DIM):
        super().__init__()
        self.image_tower, self.text_tower = image_tower, text_tower
        image_dim = image_tower.classifier.in_features
        text_dim = text_tower.classifier.in_features
        # The towers' own heads become identities: their features go to the projections.
        image_tower.classifier = nn.Identity()
        text_tower.classifier = nn.Identity()
        text_tower.dropout = nn.Identity()
        # The head: both projections and the temperature (trained by every method).
        self.classifier = nn.ModuleDict(
            {
                "image": nn.Linear(image_dim, embed_dim),
                "text": nn.Linear(text_dim, embed_dim),
                "temperature": Temperature(),
            }
        )

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.classifier["image"](self.image_tower(images)), dim=-1)

    def embed_texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        features = self.text_tower(input_ids=input_ids, attention_mask=attention_mask).logits
        return F.normalize(self.classifier["text"](features), dim=-1)

    def forward(
        self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        similarities = self.embed_images(images) @ self.embed_texts(input_ids, attention_mask).T
        return self.classifier["temperature"](similarities)


def dual_encoder(image_base: nn.Module, *, seed: int = 0) -> tuple[Any, DualEncoder]:
    """A tokenizer and a ``DualEncoder`` of a copy of ``image_base`` (a trained ``TinyViT``) and
    a fresh MiniLM-L6, with fresh projections drawn with ``seed``."""
    tokenizer, text = load_text_model("sequence", 2, seed=seed)
    image = copy.deepcopy(image_base)
    torch.manual_seed(seed)
    return tokenizer, DualEncoder(image, text)


def contrastive_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric cross-entropy over a ``(B, B)`` similarity matrix whose row ``i`` and
    column ``i`` belong to example ``i``; every pair of the same class (``labels``) is a correct
    match, the target spread evenly over them."""
    same = (labels[:, None] == labels[None, :]).float()
    targets = same / same.sum(dim=1, keepdim=True)
    rows = -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    cols = -(targets * F.log_softmax(logits.T, dim=1)).sum(dim=1).mean()
    return (rows + cols) / 2


@torch.no_grad()
def class_embeddings(
    model: DualEncoder, tokenizer: Any, templates: tuple[str, ...]
) -> torch.Tensor:
    """One unit vector per digit: the mean of its captions' embeddings over ``templates``,
    normalised ``(10, EMBED_DIM)``."""
    device = next(model.parameters()).device
    texts = [caption(d, t) for d in range(10) for t in templates]
    enc = tokenizer(texts, padding=True, return_tensors="pt").to(device)
    emb = model.embed_texts(enc["input_ids"], enc["attention_mask"]).reshape(10, len(templates), -1)
    return F.normalize(emb.mean(dim=1), dim=-1)


@torch.no_grad()
def zero_shot_accuracy(
    model: DualEncoder,
    tokenizer: Any,
    images: np.ndarray,
    labels: np.ndarray,
    templates: tuple[str, ...] = EVAL_TEMPLATES,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Classify each image as the digit whose ``templates`` captions it is most similar to;
    return the accuracy and the predictions."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    classes = class_embeddings(model, tokenizer, templates)
    predictions = []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(images[start : start + batch_size]).to(device)
        predictions.append((model.embed_images(batch) @ classes.T).argmax(-1).cpu())
    model.train(was_training)
    predicted = torch.cat(predictions).numpy()
    return {"accuracy": float((predicted == labels).mean()), "predictions": predicted}


def _at_size(images: np.ndarray, labels: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    return (images if images.shape[-2:] == (size, size) else resize_images(images, size)), labels


#: LoRA's targets in both towers when ``lora`` is left out: query and value.
MATCHER_TARGETS = ("query", "value")


def finetune_matcher(
    train: tuple[np.ndarray, np.ndarray],
    eval: tuple[np.ndarray, np.ndarray] | None,
    *,
    image_base: nn.Module,
    method: str = "lora",
    lora: LoRAConfig | None = None,
    epochs: int = 3,
    lr: float | None = None,
    batch_size: int = 64,
    seed: int = 0,
    device: Any = None,
    progress: bool = True,
    return_model: bool = False,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    **loop: Any,
) -> dict[str, Any] | tuple[dict[str, Any], nn.Module]:
    """Train a ``dual_encoder(image_base)`` contrastively on digit images (``(images, labels)``,
    or a dataset with columns ``image`` and ``label``; images of another size than the tower's,
    such as 8×8 digits, are resized to it), each paired with a caption drawn (seeded) from
    ``TRAIN_TEMPLATES`` at every step, with ``method``: ``"head"`` (the two projections and the
    temperature only), ``"lora"`` (``lora``, a ``LoRAConfig``; default r = 8 on query and value
    in both towers, ``MATCHER_TARGETS``, plus the head) or ``"full"``. After each epoch,
    ``metric`` is the zero-shot accuracy on ``eval`` with the held-out phrasings
    ``EVAL_TEMPLATES``. ``loss_fn(logits, labels)`` replaces ``contrastive_loss``. ``loop`` may
    set the loop's keywords (``LoopSettings``: ``warmup_ratio``, …). Returns the record (and the
    model with ``return_model``)."""
    loop_settings = LoopSettings.from_keywords("finetune_matcher()", loop, MATCHER_TARGETS)
    lora = lora_or_default(lora, MATCHER_TARGETS)
    _check_method(method)
    if method == "bitfit":
        raise ValueError("finetune_matcher supports 'head', 'lora' and 'full'")
    seed_everything(seed)
    tokenizer, model = dual_encoder(image_base, seed=seed)
    size = image_base.config["image_size"]
    train, eval = (
        None if split is None else _at_size(*image_arrays(split), size) for split in (train, eval)
    )
    images, labels = train
    images_t, labels_t = torch.from_numpy(images), torch.from_numpy(labels)
    generator = torch.Generator().manual_seed(seed)

    def collate(indices: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        picks = torch.randint(len(TRAIN_TEMPLATES), (len(indices),), generator=generator)
        texts = [
            caption(int(labels_t[i]), TRAIN_TEMPLATES[int(t)])
            for i, t in zip(indices, picks, strict=True)
        ]
        enc = tokenizer(texts, padding=True, return_tensors="pt")
        inputs = {"images": images_t[indices], "input_ids": enc["input_ids"],
                  "attention_mask": enc["attention_mask"]}  # fmt: skip
        return inputs, labels_t[indices]

    evaluate = None
    if eval is not None:

        def evaluate(net: nn.Module) -> dict[str, Any]:
            scores = zero_shot_accuracy(net, tokenizer, *eval)
            right = scores["predictions"] == eval[1]
            return {
                "metric": scores["accuracy"],
                "eval_correct": "".join("1" if ok else "0" for ok in right),  # for paired tests
            }

    settings = TrainSettings(
        method=method,
        lora=lora,
        epochs=epochs,
        lr=lr,
        default_lr=FORMER_LR,
        batch_size=batch_size,
        seed=seed,
        device=device,
        progress=progress,
        return_model=return_model,
        loss_fn=loss_fn or contrastive_loss,
        loop=loop_settings,
    )
    return _run(
        "image-text-matching",
        "tinyvit+minilm",
        model,
        len(labels),
        collate,
        evaluate,
        {
            "max_length": None,
            "metric_name": "zero_shot_accuracy",
            "n_eval": None if eval is None else len(eval[1]),
            "embed_dim": EMBED_DIM,
            "templates": {"train": list(TRAIN_TEMPLATES), "eval": list(EVAL_TEMPLATES)},
            "base": getattr(image_base, "pretrain_record", None),
        },
        settings,
    )

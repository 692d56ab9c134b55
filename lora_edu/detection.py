"""Object detection, smallest version: find one handwritten digit on a larger canvas, say which
digit it is and where (its box), with the MNIST-pretrained TinyViT and a box-and-class head.

    data = place_digits(images, labels, 2000, seed=0)          # 56×56 canvases, boxes, labels
    detector = vit_detector(pretrained_vit())                    # TinyViT at 56×56 + box head
    apply_lora(detector, LoRAConfig(DETECTOR_TARGETS, r=8))      # or head only, or full
    ... train with detection_loss; score with detection_scores (finetune_detector does both)

**The canvas.** Each digit is scaled to a random size and pasted at a random position on a black
56×56 canvas; its box is the tight box around its ink, as fractions of the canvas
``(x0, y0, x1, y1)``.

**The model.** The pretrained TinyViT saw 28×28 images as a 4×4 grid of 7×7 patches. At 56×56 the
same patch size gives an 8×8 grid: the patch embedding is reused as it is, and the position
embedding, learned for 16 positions, is resized to 64 by bicubic interpolation of its 4×4 grid
(the usual way to run a ViT at a higher resolution). The classifier is replaced by a head that
reads the CLS token and outputs 10 class logits and 4 box numbers (centre and size, squashed to
[0, 1] by a sigmoid).

**Scores.** The IoU (intersection over union) of the predicted and the true box; a detection is
right when its class is right **and** its IoU is at least 0.5 (the PASCAL VOC rule).

ARCHITECTURE notes: a task module on top of the training side: imports ``config``,
``defaults``, ``lora`` (``LoRAConfig``), ``models`` (TinyViT, resizing) and ``training.loop``,
``training.run`` (``finetune_detector`` trains through ``_run`` with one ``TrainSettings``);
imported by ``sweep`` and notebook 17. The pretrained ``base`` comes from the caller
(``lora_edu.pretrained_vit``), so this module never pretrains.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lora_edu.config import device as default_device
from lora_edu.defaults import DETECTION_LR
from lora_edu.lora import LoRAConfig
from lora_edu.models import TinyViT, resize_images
from lora_edu.training.loop import Collate, _check_method, seed_everything
from lora_edu.training.run import LoopSettings, TrainSettings, _run, lora_or_default

#: The canvas side in pixels, and the range of a pasted digit's side.
CANVAS = 56
DIGIT_SIZES = (16, 40)
#: A detection counts when the class is right and the box overlaps the truth this much.
IOU_THRESHOLD = 0.5


def place_digits(
    images: np.ndarray,
    labels: np.ndarray,
    n: int,
    *,
    canvas: int = CANVAS,
    sizes: tuple[int, int] = DIGIT_SIZES,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """``n`` canvases ``(n, canvas, canvas)`` uint8, each with one digit drawn (with
    replacement) from ``images (N, 28, 28)``, resized to a side in ``sizes`` (bilinear) and
    pasted at a uniformly random position; returns ``images``, ``labels (n,)`` and ``boxes
    (n, 4)`` float32: the tight box of the pasted ink as fractions ``(x0, y0, x1, y1)``."""
    if not sizes[0] <= sizes[1] <= canvas:
        raise ValueError(f"digit sizes {sizes} must fit the {canvas}-pixel canvas")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(images), n)
    out = np.zeros((n, canvas, canvas), np.uint8)
    boxes = np.zeros((n, 4), np.float32)
    for i, k in enumerate(picks):
        size = int(rng.integers(sizes[0], sizes[1] + 1))
        digit = resize_images(images[k : k + 1], size)[0]
        top, left = rng.integers(0, canvas - size + 1, 2)
        out[i, top : top + size, left : left + size] = digit
        rows, cols = np.nonzero(digit > 0)
        if len(rows) == 0:  # an empty image: its whole frame is the box
            rows, cols = np.array([0, size - 1]), np.array([0, size - 1])
        boxes[i] = (
            left + cols.min(),
            top + rows.min(),
            left + cols.max() + 1,
            top + rows.max() + 1,
        )
    return {
        "images": out,
        "labels": np.asarray(labels)[picks].astype(np.int64),
        "boxes": boxes / canvas,
    }


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of paired boxes ``a[i]``, ``b[i]`` (``(n, 4)`` as ``x0, y0, x1, y1``): the area of their
    intersection over the area of their union, in [0, 1]."""
    x0, y0 = torch.maximum(a[:, 0], b[:, 0]), torch.maximum(a[:, 1], b[:, 1])
    x1, y1 = torch.minimum(a[:, 2], b[:, 2]), torch.minimum(a[:, 3], b[:, 3])
    inter = (x1 - x0).clamp(min=0) * (y1 - y0).clamp(min=0)

    def area(box: torch.Tensor) -> torch.Tensor:
        return (box[:, 2] - box[:, 0]).clamp(min=0) * (box[:, 3] - box[:, 1]).clamp(min=0)

    union = area(a) + area(b) - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(union))


class BoxAndClassHead(nn.Module):
    """CLS features ``(B, dim)`` → ``(class logits (B, classes), boxes (B, 4))``; the boxes come
    as centre and size through a sigmoid, returned as ``x0, y0, x1, y1``."""

    def __init__(self, dim: int, num_classes: int = 10) -> None:
        super().__init__()
        self.classes = nn.Linear(dim, num_classes)
        self.box = nn.Linear(dim, 4)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cx, cy, w, h = torch.sigmoid(self.box(features)).unbind(-1)
        boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)
        return self.classes(features), boxes


def vit_detector(base: nn.Module, canvas: int = CANVAS, seed: int = 0) -> nn.Module:
    """A copy of the pretrained ``TinyViT`` ``base`` that reads ``canvas × canvas`` images: the
    same patch size and weights, its position embedding resized (bicubic) from the pretrained
    grid to the new one, and ``classifier`` replaced by a fresh ``BoxAndClassHead`` (drawn with
    ``seed``); calling it returns ``(logits, boxes)``."""
    config = {**base.config, "image_size": canvas}
    model = TinyViT(**config)
    state = {k: v for k, v in base.state_dict().items() if not k.startswith("classifier")}
    old_grid = base.config["image_size"] // base.config["patch_size"]
    new_grid = canvas // base.config["patch_size"]
    pos = state["position_embedding"]
    cls, grid = pos[:, :1], pos[:, 1:]
    grid = grid.reshape(1, old_grid, old_grid, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    state["position_embedding"] = torch.cat(
        [cls, grid.permute(0, 2, 3, 1).reshape(1, new_grid * new_grid, -1)], dim=1
    )
    model.load_state_dict(state, strict=False)
    torch.manual_seed(seed)
    model.classifier = BoxAndClassHead(config["dim"], config["num_classes"])
    return model.eval()


def detection_loss(
    outputs: tuple[torch.Tensor, torch.Tensor], labels: torch.Tensor, boxes: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy on the class plus the box loss: L1 on the four coordinates and ``1 − IoU``
    (so that a box is pulled towards overlap, not only towards its corners)."""
    logits, predicted = outputs
    box = F.l1_loss(predicted, boxes) + (1 - box_iou(predicted, boxes)).mean()
    return F.cross_entropy(logits, labels) + 2 * box


@torch.no_grad()
def detection_scores(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    boxes: np.ndarray,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Mean IoU, class accuracy and accuracy at IoU ≥ ``IOU_THRESHOLD`` (class right and box
    good enough) of ``model`` on canvases, with the predicted boxes ``(n, 4)``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    logits, predicted = [], []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(images[start : start + batch_size]).to(device)
        out_logits, out_boxes = model(batch)
        logits.append(out_logits.cpu())
        predicted.append(out_boxes.cpu())
    model.train(was_training)
    logits, predicted = torch.cat(logits), torch.cat(predicted)
    iou = box_iou(predicted, torch.from_numpy(boxes))
    right = logits.argmax(-1).numpy() == labels
    found = right & (iou.numpy() >= IOU_THRESHOLD)
    return {
        "mean_iou": float(iou.mean()),
        "class_accuracy": float(right.mean()),
        "accuracy_at_iou": float(found.mean()),
        "found": found,
        "boxes": predicted.numpy(),
        "iou": iou.numpy(),
    }


def _packed_loss(outputs: tuple[torch.Tensor, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    """``detection_loss`` with the targets packed as one ``(B, 5)`` tensor: label, then box."""
    return detection_loss(outputs, targets[:, 0].long(), targets[:, 1:])


#: LoRA's targets in the detector when ``lora`` is left out: the attention projections.
DETECTOR_TARGETS = ("query", "key", "value", "output")


def finetune_detector(
    train: dict[str, np.ndarray],
    eval: dict[str, np.ndarray] | None,
    *,
    base: nn.Module,
    method: str = "lora",
    lora: LoRAConfig | None = None,
    epochs: int = 10,
    lr: float | None = None,
    batch_size: int = 64,
    seed: int = 0,
    device: Any = None,
    progress: bool = True,
    return_model: bool = False,
    loss_fn: Callable[[Any, torch.Tensor], torch.Tensor] | None = None,
    **loop: Any,
) -> dict[str, Any] | tuple[dict[str, Any], nn.Module]:
    """Fine-tune ``vit_detector(base)`` on canvases (``place_digits``'s dicts) with ``method``
    (``"head"``: only the box-and-class head; ``"lora"``: LoRA (``lora``, a ``LoRAConfig``;
    default r = 8 on the attention projections, ``DETECTOR_TARGETS``) and the head; ``"full"``:
    everything), through the package's training loop, and score it on ``eval`` after each
    epoch: ``metric`` is the accuracy at IoU ≥ 0.5, beside ``mean_iou`` and ``class_accuracy``.
    ``lr=None`` takes the method's rate in the detection pilot (``defaults.DETECTION_LR``).
    ``loss_fn(outputs, targets)`` replaces the loss (targets: ``(B, 5)``, the label then the
    box). ``loop`` may set the loop's keywords (``LoopSettings``: ``warmup_ratio``, …).
    Returns the record, and the model with ``return_model``."""
    loop_settings = LoopSettings.from_keywords("finetune_detector()", loop, DETECTOR_TARGETS)
    lora = lora_or_default(lora, DETECTOR_TARGETS)
    _check_method(method)
    if method == "bitfit":
        raise ValueError("finetune_detector supports 'head', 'lora' and 'full'")
    seed_everything(seed)
    net = vit_detector(base, seed=seed)
    run_device = torch.device(device) if device is not None else default_device()

    def collate_for(data: dict[str, np.ndarray]) -> Collate:
        images = torch.from_numpy(data["images"]).to(run_device)
        targets = torch.from_numpy(
            np.concatenate([data["labels"][:, None].astype(np.float32), data["boxes"]], axis=1)
        )
        return lambda indices: ({"images": images[indices.to(run_device)]}, targets[indices])

    evaluate = None
    if eval is not None:

        def evaluate(model: nn.Module) -> dict[str, Any]:
            scores = detection_scores(model, eval["images"], eval["labels"], eval["boxes"])
            return {
                "metric": scores["accuracy_at_iou"],
                "mean_iou": scores["mean_iou"],
                "class_accuracy": scores["class_accuracy"],
                # each canvas right (class and IoU ≥ 0.5) or not, for paired tests
                "eval_correct": "".join("1" if ok else "0" for ok in scores["found"]),
            }

    settings = TrainSettings(
        method=method,
        lora=lora,
        epochs=epochs,
        lr=lr,
        default_lr=DETECTION_LR,
        batch_size=batch_size,
        seed=seed,
        device=device,
        progress=progress,
        return_model=return_model,
        loss_fn=loss_fn or _packed_loss,
        loop=loop_settings,
    )
    return _run(
        "detection",
        "tinyvit",
        net,
        len(train["labels"]),
        collate_for(train),
        evaluate,
        {
            "max_length": None,
            "metric_name": "accuracy_at_iou",
            "n_eval": None if eval is None else len(eval["labels"]),
            "canvas": int(train["images"].shape[-1]),
            "base": getattr(base, "pretrain_record", None),
        },
        settings,
    )

"""One-digit detection on a canvas: data, IoU, the TinyViT detector, its training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lora_edu import detection
from lora_edu.models import TinyViT


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    images = np.zeros((10, 28, 28), np.uint8)
    for k, img in enumerate(images):
        img[4 + k : 20, 6:22] = 200  # a block of ink, one per label
    return images, np.arange(10)


def test_placed_digits_have_tight_boxes_inside_the_canvas(digits):
    data = detection.place_digits(*digits, 50, seed=3)
    images, boxes = data["images"], data["boxes"]
    assert images.shape == (50, 56, 56) and boxes.shape == (50, 4)
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 1).all()
    assert (boxes[:, 2:] > boxes[:, :2]).all()
    for img, box in zip(images, boxes, strict=True):  # the box is exactly the ink's extent
        rows, cols = np.nonzero(img)
        assert np.allclose(box * 56, [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
    again = detection.place_digits(*digits, 50, seed=3)
    assert np.array_equal(again["images"], images)  # seeded
    with pytest.raises(ValueError, match="must fit"):
        detection.place_digits(*digits, 2, sizes=(16, 60))


def test_box_iou_known_values():
    a = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.2, 0.2]])
    b = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.25, 0.0, 0.75, 0.5], [0.5, 0.5, 1.0, 1.0]])
    assert torch.allclose(detection.box_iou(a, b), torch.tensor([1.0, 1 / 3, 0.0]))


def test_the_detector_keeps_the_pretrained_weights_and_reads_the_bigger_canvas():
    torch.manual_seed(0)
    base = TinyViT()
    same = detection.vit_detector(base, canvas=28)  # same grid: the embedding is unchanged
    assert torch.allclose(same.position_embedding, base.position_embedding, atol=1e-6)
    det = detection.vit_detector(base)
    assert det.position_embedding.shape == (1, 65, 64)  # CLS + an 8×8 grid
    assert torch.equal(det.blocks[0].attention.query.weight, base.blocks[0].attention.query.weight)
    logits, boxes = det(torch.zeros(3, 56, 56, dtype=torch.uint8))
    assert logits.shape == (3, 10) and boxes.shape == (3, 4)
    assert (boxes[:, 2:] >= boxes[:, :2]).all()  # centre ± half the size


def test_head_only_training_moves_only_the_head(digits):
    torch.manual_seed(0)
    base = TinyViT()
    data = detection.place_digits(*digits, 32, seed=0)
    record, model = detection.finetune_detector(
        data, data, base=base, method="head", epochs=1, lr=1e-2, batch_size=16,
        progress=False, return_model=True, device="cpu",
    )  # fmt: skip
    assert record["trainable_params"] == 64 * 10 + 10 + 64 * 4 + 4
    assert record["metric_name"] == "accuracy_at_iou" and 0 <= record["metric"] <= 1
    assert torch.equal(
        model.blocks[0].attention.query.weight, base.blocks[0].attention.query.weight
    )
    with pytest.raises(ValueError, match="supports"):
        detection.finetune_detector(data, None, base=base, method="bitfit")

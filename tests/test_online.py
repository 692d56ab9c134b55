"""Online learning on a drifting stream (``lora_edu.online``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lora_edu.lora import LoRAConfig
from lora_edu.models import TinyViT
from lora_edu.online import (
    follow_stream,
    nearest_period,
    rotate_images,
    rotated_stream,
)


def test_rotation_by_a_right_angle_is_numpys_and_zero_degrees_copies():
    x = np.random.default_rng(0).integers(0, 256, (3, 8, 8), dtype=np.uint8)
    np.testing.assert_array_equal(rotate_images(x, 90), np.rot90(x, 1, axes=(1, 2)))
    same = rotate_images(x, 0)
    np.testing.assert_array_equal(same, x)
    assert same is not x


def test_the_stream_draws_disjoint_periods_and_says_when_images_run_short():
    images = np.arange(50, dtype=np.uint8)[:, None, None] * np.ones((1, 4, 4), np.uint8)
    labels = np.arange(50)
    periods = rotated_stream(images, labels, [0, 90, 180], n_train=10, n_test=5, seed=1)
    assert [len(p.train_labels) for p in periods] == [0, 10, 10]
    assert [len(p.test_labels) for p in periods] == [5, 5, 5]
    used = np.concatenate([np.concatenate([p.train_labels, p.test_labels]) for p in periods])
    assert len(set(used.tolist())) == 35  # no image in two places
    for p in periods:  # each image is its label's constant image, rotated (a constant stays)
        assert (p.test_images[:, 1, 1] == p.test_labels).all()
    with pytest.raises(ValueError, match="need 35 images; got 30"):
        rotated_stream(images[:30], labels[:30], [0, 90, 180], n_train=10, n_test=5)


def test_nearest_period_picks_the_closest_centroid():
    centroids = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    feats = np.array([[1.0, 1.0], [9.0, -1.0], [0.5, 7.0]])
    assert nearest_period(centroids, feats).tolist() == [0, 1, 2]


def _stream():
    """Three periods a tiny ViT can tell apart: dark, mid-grey and bright images, labels by a
    pixel pattern."""
    rng = np.random.default_rng(0)
    periods = []
    from lora_edu.online import Period

    for k, level in enumerate((40, 120, 220)):
        labels = rng.integers(0, 3, 60)
        images = np.full((60, 8, 8), level, np.uint8)
        for i, y in enumerate(labels):
            images[i, :, 2 * y : 2 * y + 2] = 255 - level
        periods.append(Period(0.0, images[:40] if k else images[:0], labels[:40] if k else labels[:0],
                              images[40:], labels[40:]))  # fmt: skip
    return periods


@pytest.mark.parametrize("method", ["lora", "full", "adapter-per-period"])
def test_following_a_stream_scores_every_period_and_leaves_the_base_alone(method):
    torch.manual_seed(0)
    base = TinyViT(image_size=8, patch_size=2, dim=16, depth=2, heads=2, num_classes=3)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    periods = _stream()
    result = follow_stream(base, periods, method, 1e-2, epochs=3, batch_size=16,
                           lora=LoRAConfig(["query", "value"], r=2))  # fmt: skip
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
    acc = result["accuracy"]
    assert acc.shape == (3, 3) and len(result["correct"][2][1]) == 20
    with torch.no_grad():
        expected = (base.eval()(torch.from_numpy(periods[1].test_images)).argmax(-1).numpy()
                    == periods[1].test_labels).mean()  # fmt: skip
    assert acc[0, 1] == pytest.approx(expected)  # row 0: the base, before any training
    if method == "adapter-per-period":
        routed = result["router_accuracy"]
        assert routed.shape == (3, 3) and np.isnan(routed[1, 2])
        # dark, grey and bright periods are told apart by the base's features; period 0 always
        # goes to the base itself, so nothing of it is forgotten
        assert routed[2].tolist() == [1.0, 1.0, 1.0] and (routed[:, 0] == 1).all()
        assert (acc[:, 0] == acc[0, 0]).all()
        oracle = result["oracle_accuracy"]  # the router was always right: the oracle's numbers
        np.testing.assert_allclose(oracle[2], acc[2])
        assert np.isnan(oracle[1, 2]) and oracle[1, 1] == pytest.approx(acc[1, 1])
    else:
        assert "router_accuracy" not in result
    with pytest.raises(ValueError, match="method must be one of"):
        follow_stream(base, periods, "replay", 1e-2)

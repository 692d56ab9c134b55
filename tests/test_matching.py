"""CLIP-style image–text matching: captions, the contrastive loss, zero-shot classification."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lora_edu import matching
from lora_edu.models import TinyViT


def test_captions_and_held_out_phrasings_differ():
    assert matching.caption(7, "a handwritten {name}") == "a handwritten seven"
    assert matching.caption(3, "the digit {d}") == "the digit 3"
    assert not set(matching.TRAIN_TEMPLATES) & set(matching.EVAL_TEMPLATES)


def test_the_contrastive_loss_counts_every_same_class_pair_as_right():
    labels = torch.tensor([0, 1, 0])
    perfect = torch.tensor([[9.0, -9.0, 9.0], [-9.0, 9.0, -9.0], [9.0, -9.0, 9.0]])
    # the two zeros match each other's captions as well as their own: the best possible loss
    assert matching.contrastive_loss(perfect, labels) == pytest.approx(
        math.log(2) * 2 / 3, abs=1e-3
    )
    wrong = -perfect
    assert matching.contrastive_loss(wrong, labels) > 10
    distinct = torch.tensor([0, 1, 2])
    uniform = torch.zeros(3, 3)  # no information: log(B) either way
    assert matching.contrastive_loss(uniform, distinct) == pytest.approx(math.log(3))


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return matching.dual_encoder(TinyViT())


def test_the_dual_encoder_embeds_both_sides_on_the_unit_sphere(encoder):
    tokenizer, model = encoder
    images = torch.zeros(2, 28, 28, dtype=torch.uint8)
    enc = tokenizer(["a handwritten seven", "the digit 1"], padding=True, return_tensors="pt")
    logits = model(images, enc["input_ids"], enc["attention_mask"])
    assert logits.shape == (2, 2)
    texts = model.embed_texts(enc["input_ids"], enc["attention_mask"])
    assert torch.allclose(texts.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(logits, (1 / 0.07) * model.embed_images(images) @ texts.T, atol=1e-4)
    classes = matching.class_embeddings(model, tokenizer, matching.EVAL_TEMPLATES)
    assert classes.shape == (10, matching.EMBED_DIM)


def test_head_only_training_trains_the_projections_and_the_temperature():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (24, 28, 28), dtype=np.uint8)
    labels = np.arange(24) % 10
    record = matching.finetune_matcher(
        (images, labels), (images[:10], labels[:10]), image_base=TinyViT(), method="head",
        epochs=1, lr=1e-3, batch_size=12, progress=False, device="cpu",
    )  # fmt: skip
    assert record["trainable_params"] == (64 * 64 + 64) + (384 * 64 + 64) + 1
    assert record["metric_name"] == "zero_shot_accuracy" and 0 <= record["metric"] <= 1
    with pytest.raises(ValueError, match="supports"):
        matching.finetune_matcher((images, labels), None, image_base=TinyViT(), method="bitfit")


def test_images_of_another_size_are_resized_to_the_image_tower():
    """8×8 digits (the matching task's images, as a dataset) train and are scored at the
    tower's 28×28, like finetune_vit's."""
    from lora_edu.data import load_digits
    from lora_edu.sweep import _subset

    ds = load_digits(seed=0)
    train, test = _subset(ds["train"], 20, 0), _subset(ds["test"], 10, 0)
    record = matching.finetune_matcher(
        train, test, image_base=TinyViT(), method="head", epochs=1, lr=1e-3, batch_size=10,
        progress=False, device="cpu",
    )  # fmt: skip
    assert record["n_train"] == 20 and record["n_eval"] == 10 and len(record["eval_correct"]) == 10

"""Tests for lora_edu.attention: hook-captured maps, CLS attention, rollout, distances, plots.

A small random TinyViT (8×8 images, 2×2 patches → 16 patches, 2 blocks, 2 heads) keeps them fast.
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from torch import nn

from lora_edu.attention import (
    attention_entropy,
    attention_maps,
    attention_rollout,
    cls_attention,
    patch_distribution,
    patch_grid,
    plot_attention,
    total_variation,
)
from lora_edu.lora import apply_lora
from lora_edu.models import Attention, TinyViT


def small_vit(seed: int = 0) -> TinyViT:
    torch.manual_seed(seed)
    model = TinyViT(image_size=8, patch_size=2, dim=16, depth=2, heads=2, num_classes=3)
    with torch.no_grad():  # a larger query/key scale gives peaked, clearly non-uniform maps
        for block in model.blocks:
            block.attention.query.weight.mul_(4)
            block.attention.key.weight.mul_(4)
    return model


def images(n: int = 5, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (n, 8, 8), generator=torch.Generator().manual_seed(seed)).to(
        torch.uint8
    )


def hooks_left(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_maps_have_the_documented_shape_and_are_distributions():
    maps = attention_maps(small_vit(), images(5))
    assert maps.shape == (2, 5, 2, 17, 17)  # (L, B, heads, T, T), T = 1 + 16 patches
    assert maps.dtype == torch.float32
    assert (maps >= 0).all()
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 5, 2, 17))
    assert maps.std() > 0.01  # not uniform: the test below could not tell layers apart otherwise


def test_maps_equal_the_models_own_and_a_recomputed_softmax():
    model = small_vit().eval()
    x = images(4)
    maps = attention_maps(model, x)
    _, returned = model(x, return_attention=True)
    torch.testing.assert_close(maps, torch.stack(returned))
    # softmax(Q Kᵀ / √d) recomputed by hand from each block's query/key on its normed input
    normed = []
    handles = [
        b.norm1.register_forward_hook(lambda m, i, o: normed.append(o)) for b in model.blocks
    ]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    for layer, (block, h) in enumerate(zip(model.blocks, normed, strict=True)):
        B, T, dim = h.shape
        heads = block.attention.heads
        q = block.attention.query(h).view(B, T, heads, -1).transpose(1, 2)
        k = block.attention.key(h).view(B, T, heads, -1).transpose(1, 2)
        by_hand = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(dim // heads), dim=-1)
        torch.testing.assert_close(maps[layer], by_hand.detach())


def test_batches_numpy_input_and_restored_state():
    model = small_vit().train()
    x = images(7)
    whole = attention_maps(model, x)
    assert model.training  # restored
    assert hooks_left(model) == 0
    torch.testing.assert_close(attention_maps(model, x.numpy(), batch_size=3), whole)


def test_hooks_are_removed_when_the_forward_fails():
    model = small_vit()
    with pytest.raises(ValueError, match="TinyViT expects images"):
        attention_maps(model, torch.zeros(2, 9, 9, dtype=torch.uint8))
    assert hooks_left(model) == 0


def test_errors_teach():
    with pytest.raises(ValueError, match="no lora_edu.models.Attention"):
        attention_maps(nn.Sequential(nn.Linear(2, 2)), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="0 images"):
        attention_maps(small_vit(), torch.zeros(0, 8, 8, dtype=torch.uint8))
    maps = attention_maps(small_vit(), images(2))
    with pytest.raises(ValueError, match="out of range for 2 layers"):
        cls_attention(maps, layer=2)
    with pytest.raises(ValueError, match="out of range for 2 heads"):
        cls_attention(maps, head=5)
    with pytest.raises(ValueError, match=r"\(L, B, heads, T, T\)"):
        cls_attention(maps[0])
    with pytest.raises(ValueError, match="residual"):
        attention_rollout(maps, residual=1.5)
    with pytest.raises(ValueError, match="square grid"):
        patch_grid(np.ones(17))
    with pytest.raises(ValueError, match="same shape"):
        total_variation(torch.ones(3), torch.ones(4))


def test_lora_changes_maps_only_through_query_and_key_of_each_layer():
    base = small_vit()
    x = images(4)
    before = attention_maps(base, x)
    model = small_vit()
    apply_lora(model, ["query", "key", "value"], r=2, alpha=2)
    # B = 0: LoRA starts exactly at the pretrained model, maps bit for bit equal
    assert torch.equal(attention_maps(model, x), before)
    with torch.no_grad():
        model.blocks[0].attention.value.lora_B.normal_()
    after_value = attention_maps(model, x)
    # layer 0's map depends only on its query and key: changing its values cannot move it ...
    assert torch.equal(after_value[0], before[0])
    # ... but layer 1 sees the changed values through the residual stream
    assert total_variation(after_value[1], before[1]).mean() > 1e-3
    with torch.no_grad():
        model.blocks[0].attention.query.lora_B.normal_()
    assert total_variation(attention_maps(model, x)[0], before[0]).mean() > 1e-3


def test_cls_attention_is_the_renormalised_cls_row():
    maps = attention_maps(small_vit(), images(3))
    mean_heads = cls_attention(maps, layer=-1)
    assert mean_heads.shape == (3, 16)
    torch.testing.assert_close(mean_heads.sum(-1), torch.ones(3))
    row = maps[1, :, :, 0, 1:].mean(1)
    torch.testing.assert_close(mean_heads, row / row.sum(-1, keepdim=True))
    one_head = cls_attention(maps, layer=0, head=1)
    torch.testing.assert_close(one_head, maps[0, :, 1, 0, 1:] / maps[0, :, 1, 0, 1:].sum(-1, True))
    assert not torch.allclose(cls_attention(maps, head=0), cls_attention(maps, head=1))


def test_patch_distribution_drops_cls_and_renormalises():
    matrix = torch.tensor([[[0.5, 0.25, 0.25], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])
    torch.testing.assert_close(patch_distribution(matrix), torch.tensor([[0.5, 0.5]]))


def test_rollout_is_the_product_of_residual_mixed_layers():
    maps = attention_maps(small_vit(), images(3))
    eye = torch.eye(17)
    hats = [0.5 * eye + 0.5 * maps[layer].mean(1) for layer in range(2)]
    rollout = attention_rollout(maps)
    torch.testing.assert_close(rollout, hats[1] @ hats[0])  # later layers on the left
    torch.testing.assert_close(rollout.sum(-1), torch.ones(3, 17))
    assert (rollout >= 0).all()
    # residual = 1 ignores attention (identity); residual = 0 with one layer is its head mean
    torch.testing.assert_close(attention_rollout(maps, residual=1.0), eye.expand(3, 17, 17))
    torch.testing.assert_close(attention_rollout(maps[:1], residual=0.0), maps[0].mean(1))


def test_total_variation_and_entropy_on_known_distributions():
    uniform, onehot = torch.full((4,), 0.25), torch.tensor([0.0, 0.0, 1.0, 0.0])
    other = torch.tensor([1.0, 0.0, 0.0, 0.0])
    assert total_variation(uniform, uniform) == 0
    assert total_variation(onehot, other) == 1
    torch.testing.assert_close(total_variation(uniform, onehot), torch.tensor(0.75))
    torch.testing.assert_close(total_variation(uniform, onehot), total_variation(onehot, uniform))
    torch.testing.assert_close(attention_entropy(uniform), torch.tensor(math.log(4)))
    assert attention_entropy(onehot) == 0  # 0 log 0 counts as 0, not NaN
    batch = torch.stack([uniform, onehot])
    assert total_variation(batch, batch.flip(0)).shape == (2,)


def test_patch_grid_follows_the_patch_embeddings_row_major_order():
    model = small_vit()
    embed = model.patch_embedding  # Conv2d, kernel = stride = 2 on 8×8 → 4×4 patches
    for k in (0, 3, 6, 13):
        image = torch.zeros(1, 1, 8, 8)
        row, col = k // 4, k % 4
        assert patch_grid(np.arange(16))[row, col] == k
        image[0, 0, 2 * row : 2 * row + 2, 2 * col : 2 * col + 2] = 1.0
        tokens = embed(image).flatten(2).transpose(1, 2)[0]  # (P, dim), as TinyViT orders them
        differs = (tokens - embed.bias).abs().sum(-1) > 1e-6
        assert differs.nonzero().flatten().tolist() == [k]
    assert patch_grid(torch.arange(32.0).view(2, 16)).shape == (2, 4, 4)


def test_plot_attention_draws_the_patch_grid_and_the_outline():
    import matplotlib.pyplot as plt

    x = images(1)
    weights = cls_attention(attention_maps(small_vit(), x))[0]
    ax = plot_attention(x[0], weights, title="digit", vmax=0.5)
    (layer,) = ax.get_images()
    np.testing.assert_allclose(layer.get_array(), patch_grid(weights))
    assert layer.get_extent() == [0, 8, 8, 0]  # the 4×4 grid spans the 8×8 pixels
    assert layer.get_clim() == (0, 0.5)
    assert len(ax.collections) == 1  # the strokes' contour
    assert ax.get_title() == "digit"
    blank = plot_attention(np.zeros((8, 8)), weights, outline="white")
    assert len(blank.collections) == 0  # a blank image has no strokes to outline
    with pytest.raises(ValueError, match="one grey image"):
        plot_attention(np.zeros((2, 8, 8)), weights, ax=ax)
    plt.close("all")


def test_attention_modules_are_found_inside_wrappers():
    wrapped = nn.ModuleDict({"vit": small_vit()})

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = wrapped

        def forward(self, x):
            return self.inner["vit"](x)

    x = images(2)
    assert sum(isinstance(m, Attention) for m in Wrapper().modules()) == 2
    torch.testing.assert_close(attention_maps(Wrapper(), x), attention_maps(wrapped["vit"], x))


def test_image_verdicts_are_the_models_predictions_example_by_example():
    import numpy as np

    from lora_edu.train import image_classifier_verdicts

    torch.manual_seed(0)
    model = TinyViT(image_size=8, patch_size=2, dim=16, depth=2, heads=2, num_classes=3)
    images = np.random.default_rng(0).random((20, 1, 8, 8), dtype=np.float32)
    with torch.no_grad():
        preds = model.eval()(torch.from_numpy(images)).argmax(-1).numpy()
    labels = np.where(np.arange(20) % 2 == 0, preds, (preds + 1) % 3)  # every other one wrong
    verdicts = image_classifier_verdicts(model, images, labels, batch_size=6)
    np.testing.assert_array_equal(verdicts, np.arange(20) % 2 == 0)
    bigger = np.repeat(np.repeat(images, 2, axis=-1), 2, axis=-2)  # 16×16: resized back to 8×8
    assert image_classifier_verdicts(model, bigger, labels).shape == (20,)
    pixels = (images * 255).round().astype(np.uint8)  # bytes, as MNIST stores them
    np.testing.assert_array_equal(
        image_classifier_verdicts(model, pixels, labels),
        model(torch.from_numpy(pixels)).argmax(-1).numpy() == labels,
    )
    with pytest.raises(ValueError, match="20 images but 19 labels"):
        image_classifier_verdicts(model, images, labels[:-1])

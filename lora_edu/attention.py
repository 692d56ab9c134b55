"""Attention maps of TinyViT: where each token looks, per layer and head, and how adaptation moves it.

TinyViT's ``Attention`` (``lora_edu.models``) computes, in every block,
``attention = softmax(Q Kᵀ / sqrt(dim / heads))`` of shape ``(B, heads, T, T)``, with ``T = 1 + P``
tokens: the CLS token first, then ``P = (image_size / patch_size)²`` patches in row-major order
(``P = 16``, a 4×4 grid, for 28×28 images and 7×7 patches). Row ``i`` is a probability
distribution: how token ``i`` mixes the values of all tokens. The classifier reads only the CLS
token, so row 0 says which patches feed the prediction directly.

* ``attention_maps(model, images)`` → ``maps (L, B, heads, T, T)``, captured with forward hooks on
  every ``Attention`` module, so it works on any model built from them (LoRA-adapted ones too).
* ``cls_attention(maps, layer, head)`` → ``(B, P)``: the CLS row over the patches of one layer,
  averaged over heads (or one head), renormalised to sum to 1.
* ``attention_rollout(maps, residual)`` → ``(B, T, T)``: attention rollout (Abnar & Zuidema,
  2020), ``R = Â_L ⋯ Â_1`` with ``Â_l = residual · I + (1 − residual) · mean_heads(A_l)``; the
  identity accounts for the skip connection ``x + attention(norm1(x))``. Rows sum to 1.
* ``patch_distribution(matrix)``: ``(B, T, T)`` → ``(B, P)``, the CLS row without CLS itself.
* ``total_variation(p, q)`` and ``attention_entropy(p)``: ``(..., P)`` → ``(...)``, to measure
  how far a map moved and how spread out it is.
* ``patch_grid(weights)``: ``(..., P)`` → ``(..., g, g)``; ``plot_attention(image, weights)``
  draws the patch weights as a grid over the image's pixels, with the strokes outlined.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from lora_edu.models import Attention


def attention_maps(model: nn.Module, images: Any, *, batch_size: int = 256) -> torch.Tensor:
    """Every attention map of ``model`` for ``images``: ``(L, B, heads, T, T)`` float32 on the CPU.

    ``L`` is the number of ``Attention`` modules in ``model`` (in the order they run), ``B`` the
    number of images. ``images`` is anything ``model`` accepts (for TinyViT: ``(B, H, W)`` or
    ``(B, C, H, W)``, uint8 or float in [0, 1]), as a tensor or numpy array; they are fed in
    batches of ``batch_size`` with the model in eval mode and without gradients. The model's
    training mode is restored and the hooks are removed afterwards, even when the forward fails.
    """
    modules = [m for m in model.modules() if isinstance(m, Attention)]
    if not modules:
        raise ValueError(
            f"{type(model).__name__} contains no lora_edu.models.Attention module, so there are "
            "no attention maps to read; pass a TinyViT (e.g. le.pretrained_vit()) or a model "
            "built from its blocks"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1")
    images = images if torch.is_tensor(images) else torch.from_numpy(np.asarray(images))
    if len(images) == 0:
        raise ValueError("got 0 images; pass at least one")
    device = next(model.parameters()).device
    captured: list[torch.Tensor] = []

    def keep_map(module: nn.Module, inputs: Any, output: tuple[torch.Tensor, torch.Tensor]):
        captured.append(output[1].detach().float().cpu())  # output = (mixed values, attention)

    handles = [m.register_forward_hook(keep_map) for m in modules]
    was_training = model.training
    model.eval()
    chunks = []
    try:
        with torch.no_grad():
            for batch in images.split(batch_size):
                captured.clear()
                model(batch.to(device))
                chunks.append(torch.stack(captured))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return torch.cat(chunks, dim=1)


def _check_maps(maps: torch.Tensor) -> torch.Tensor:
    maps = torch.as_tensor(maps)
    if maps.dim() != 5 or maps.shape[-1] != maps.shape[-2]:
        raise ValueError(
            f"expected attention maps (L, B, heads, T, T) as returned by attention_maps; "
            f"got shape {tuple(maps.shape)}"
        )
    return maps


def patch_distribution(matrix: torch.Tensor) -> torch.Tensor:
    """Row 0 (the CLS token) of ``matrix (B, T, T)`` over the patch columns ``1..T-1``,
    renormalised to sum to 1 → ``(B, P)`` with ``P = T - 1``.

    The weight CLS puts on itself is dropped: what is left is the share of CLS's attention to the
    image that goes to each patch."""
    matrix = torch.as_tensor(matrix)
    if matrix.dim() != 3 or matrix.shape[-1] != matrix.shape[-2] or matrix.shape[-1] < 2:
        raise ValueError(
            f"expected a (B, T, T) attention matrix with T >= 2 (CLS + patches); "
            f"got shape {tuple(matrix.shape)}"
        )
    row = matrix[:, 0, 1:]
    return row / row.sum(dim=-1, keepdim=True)


def cls_attention(maps: torch.Tensor, layer: int = -1, head: int | None = None) -> torch.Tensor:
    """The CLS token's attention over the patches in block ``layer``: ``(B, P)``, rows sum to 1.

    ``maps (L, B, heads, T, T)`` from ``attention_maps``; ``head=None`` averages the heads (each
    head's row is a distribution, so their mean is one too), an int picks one head.
    """
    maps = _check_maps(maps)
    n_layers, n_heads = maps.shape[0], maps.shape[2]
    if not -n_layers <= layer < n_layers:
        raise ValueError(f"layer={layer} is out of range for {n_layers} layers")
    if head is not None and not -n_heads <= head < n_heads:
        raise ValueError(f"head={head} is out of range for {n_heads} heads; or head=None (mean)")
    chosen = maps[layer].mean(dim=1) if head is None else maps[layer][:, head]
    return patch_distribution(chosen)


def attention_rollout(maps: torch.Tensor, residual: float = 0.5) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, 2020): how much each token's final state draws on each
    input token through all layers, ``(B, T, T)``.

    ``R = Â_L ⋯ Â_2 Â_1`` with ``Â_l = residual · I + (1 − residual) · mean_heads(A_l)``: the
    identity stands for the skip connection around each attention layer (the MLPs, which act on
    each token alone, are left out). Every ``Â_l`` is row-stochastic, so ``R``'s rows sum to 1.
    """
    maps = _check_maps(maps)
    if not 0.0 <= residual <= 1.0:
        raise ValueError(f"residual={residual} must be in [0, 1] (0.5 in Abnar & Zuidema)")
    T = maps.shape[-1]
    eye = torch.eye(T, dtype=maps.dtype)
    rollout = eye.expand(maps.shape[1], T, T)
    for layer_maps in maps:
        # Later layers act on the mixture that earlier layers produced: multiply on the left.
        rollout = (residual * eye + (1.0 - residual) * layer_maps.mean(dim=1)) @ rollout
    return rollout


def total_variation(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Total-variation distance ``½ Σ_i |p_i − q_i|`` over the last axis: ``(..., P)`` → ``(...)``.

    0 for equal distributions, 1 for distributions on disjoint patches: the largest share of
    attention that would have to move to turn ``q`` into ``p``."""
    p, q = torch.as_tensor(p), torch.as_tensor(q)
    if p.shape != q.shape:
        raise ValueError(
            f"p and q must have the same shape; got {tuple(p.shape)} and {tuple(q.shape)}"
        )
    return 0.5 * (p - q).abs().sum(dim=-1)


def attention_entropy(p: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats over the last axis, ``−Σ_i p_i log p_i`` (with 0 log 0 = 0):
    ``(..., P)`` → ``(...)``. ``log P`` for uniform attention, 0 for attention on one patch."""
    p = torch.as_tensor(p)
    logs = torch.where(p > 0, p.log(), torch.zeros_like(p))
    return -(p * logs).sum(dim=-1)


def patch_grid(weights: torch.Tensor | np.ndarray) -> np.ndarray:
    """Patch weights ``(..., P)`` → ``(..., g, g)`` with ``g = √P``, in the row-major order of
    TinyViT's patch embedding (patch ``k`` covers grid row ``k // g``, column ``k % g``)."""
    weights = np.asarray(weights.detach().cpu() if torch.is_tensor(weights) else weights)
    P = weights.shape[-1]
    g = math.isqrt(P)
    if g * g != P:
        raise ValueError(
            f"{P} patch weights do not form a square grid; pass the weights over the patches "
            "only (T − 1 = (image_size / patch_size)² of them, without the CLS token)"
        )
    return weights.reshape(*weights.shape[:-1], g, g)


def plot_attention(
    image: Any,
    weights: torch.Tensor | np.ndarray,
    ax: Any = None,
    *,
    title: str | None = None,
    vmax: float | None = None,
    cmap: str = "viridis",
    outline: str = "white",
) -> Any:
    """Draw patch weights ``(P,)`` (e.g. one row of ``cls_attention``) as a ``g × g`` grid of flat
    colours over the pixels of ``image (H, W)``, with the image's strokes outlined (a contour at
    half its maximum); returns the axes.

    ``vmax`` fixes the top of the colour scale (the bottom is 0), so several panels can share one
    scale; ``outline=None`` leaves the contour out."""
    import matplotlib.pyplot as plt

    from lora_edu.plots import apply_style

    image = np.asarray(image.detach().cpu() if torch.is_tensor(image) else image, dtype=float)
    if image.ndim == 3 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 2:
        raise ValueError(f"expected one grey image (H, W); got shape {image.shape}")
    grid = patch_grid(weights)
    if grid.ndim != 2:
        raise ValueError(f"expected the weights of one image (P,); got shape {np.shape(weights)}")
    if ax is None:
        apply_style()
        ax = plt.subplots(figsize=(2.5, 2.5))[1]
    H, W = image.shape
    # Both layers span the same pixels, so patch k sits exactly on the pixels it was cut from.
    ax.imshow(grid, cmap=cmap, extent=(0, W, H, 0), interpolation="nearest", vmin=0, vmax=vmax)
    if outline and image.max() > image.min():
        centres_x, centres_y = np.arange(W) + 0.5, np.arange(H) + 0.5
        level = image.min() + 0.5 * (image.max() - image.min())
        ax.contour(centres_x, centres_y, image, levels=[level], colors=outline, linewidths=1.2)
    ax.set_xlim(0, W)
    ax.set_ylim(H, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    if title:
        ax.set_title(title, fontsize=9)
    return ax

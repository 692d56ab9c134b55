"""The LoRA layer: ``LoRALinear`` and the pure functions it is built from.

Shapes (the LoRA paper's names, which PEFT uses too)::

    x (..., d_in)    W (d_out, d_in)    b (d_out,)    A (r, d_in)    B (d_out, r)

    y = x Wᵀ + b + scaling · (x Aᵀ) Bᵀ        scaling = alpha / r   (rsLoRA: alpha / √r)

The update ΔW = scaling · B A (d_out, d_in) is never formed in the forward pass: two thin
matmuls cost r · (d_in + d_out) multiply-adds per token instead of d_in · d_out.

This is the small base the rest builds on: ``lora_conv`` subclasses the layer, ``lora_model``
wraps a whole model's layers, ``peft_format`` saves and loads them (``lora`` gathers the public
names). It imports ``quant`` (a 4-bit base) and ``variants.base`` (the registry, through which the
layer finds a variant by name); it imports no variant and nothing above it.

Nothing here picks a device: new tensors follow the base layer's device and dtype.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lora_edu.quant import QuantizedLinear
from lora_edu.variants.base import VARIANTS, variant_class

INITS = ("kaiming", "gaussian", "pissa")

# --------------------------------------------------------------------------------------------
# Pure functions


def lora_scaling(r: int, alpha: float, use_rslora: bool = False) -> float:
    """``alpha / r`` (Hu et al. 2021), or ``alpha / √r`` with rsLoRA (Kalajdzievski 2023).

    Dividing by r keeps the size of ΔW roughly independent of r at initialisation, so alpha need
    not be retuned when r changes; rsLoRA's √r keeps learning from slowing down at large r.
    """
    _check_rank_and_alpha(r, alpha)
    return alpha / math.sqrt(r) if use_rslora else alpha / r


def pissa_init(
    W: torch.Tensor, r: int, scaling: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PiSSA (Meng et al. 2024): start A and B on W's principal singular directions.

    With the SVD ``W = U S Vh`` and its top-r part ``U_r, S_r, Vh_r``::

        A = diag(√(S_r / scaling)) Vh_r        (r, d_in)
        B = U_r diag(√(S_r / scaling))         (d_out, r)
        W_res = W − scaling · B A              (d_out, d_in)

    so ``scaling · B A = U_r S_r Vh_r`` is the best rank-r approximation of W and
    ``W_res + scaling · B A = W``: the layer's output at step 0 is unchanged. These are PEFT's
    formulas (``init_lora_weights="pissa"``), computed in float32 like PEFT (float64 for float64
    weights); all three results come back in W's dtype.
    """
    _check_rank_and_alpha(r, scaling, "scaling")
    d_out, d_in = W.shape
    if r > min(d_out, d_in):
        raise ValueError(
            f"PiSSA needs r <= min(d_out, d_in) = {min(d_out, d_in)} for W of shape "
            f"{tuple(W.shape)}, got r={r}; W has no more singular directions. Use a smaller r."
        )
    work = W.detach().to(torch.float64 if W.dtype == torch.float64 else torch.float32)
    U, S, Vh = torch.linalg.svd(work, full_matrices=False)
    root = torch.diag(torch.sqrt(S[:r] / scaling))
    A = root @ Vh[:r]
    B = U[:, :r] @ root
    residual = work - scaling * B @ A
    return A.to(W.dtype), B.to(W.dtype), residual.to(W.dtype)


def _check_rank_and_alpha(r: Any, alpha: Any, name: str = "alpha") -> None:
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"r (the rank) must be a positive int, got {r!r}; typical: 4, 8, 16")
    if (
        isinstance(alpha, bool)
        or not isinstance(alpha, (int, float))
        or not 0 < alpha < math.inf  # also refuses NaN
    ):
        raise ValueError(
            f"{name} must be a positive finite number, got {alpha!r}; a common alpha: 2 * r"
        )


def _check_hyperparameters(r: Any, alpha: Any, dropout: Any, init: Any) -> None:
    _check_rank_and_alpha(r, alpha)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}; LoRA commonly uses 0 to 0.1")
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(map(repr, INITS))}, got {init!r}")


def _check_variant(variant: Any) -> None:
    if variant is not None and variant not in VARIANTS:
        raise ValueError(
            f"variant must be None (plain LoRA) or one of {', '.join(map(repr, VARIANTS))}, "
            f"got {variant!r}"
        )


# --------------------------------------------------------------------------------------------
# The layer


class LoRALinear(nn.Module):
    """``y = base(x) + scaling · B(A(dropout(x)))``: an ``nn.Linear`` plus a trainable low-rank update.

    Args:
        base: the layer to adapt, kept as ``self.base_layer`` (W (d_out, d_in), b (d_out,)).
        r: rank of the update; ``lora_A`` is (r, d_in), ``lora_B`` is (d_out, r).
        alpha: ``scaling = alpha / r`` (``alpha / √r`` with ``use_rslora``).
        dropout: dropout on the input of the LoRA path only (the base path never sees it).
        init: ``"kaiming"`` (A as nn.Linear initialises its weight, B = 0; PEFT's default),
            ``"gaussian"`` (A ~ N(0, (1/r)²), i.e. std 1/r as PEFT does, B = 0), or ``"pissa"``
            (A, B from W's top-r SVD and W replaced by the residual, see ``pissa_init``). All
            three leave the layer's output unchanged at step 0.
        use_rslora: rank-stabilised scaling ``alpha / √r``.
        variant: a LoRA descendant by name (``"dora"``, ``"vera"``, ``"adalora"``, ``"lora-fa"``,
            ``"lora-plus"``, registered in ``lora_edu.variants``), kept as ``self.variant``; None
            for plain LoRA.
        shared: state every adapted layer of a model shares (VeRA's random matrices), built by
            ``apply_lora`` with the variant's ``shared_state``.

    ``lora_A`` and ``lora_B`` are created on the base weight's device and dtype. Freezing the
    base layer is ``mark_only_lora_trainable``'s job, not this class's.
    """

    def __init__(
        self,
        base: nn.Linear,
        r: int,
        alpha: float,
        dropout: float = 0.0,
        init: str = "kaiming",
        use_rslora: bool = False,
        variant: str | None = None,
        shared: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(base, self._BASE_TYPES):
            raise TypeError(
                f"{type(self).__name__} wraps {self._WRAPS}, got a {type(base).__name__}; for a "
                "whole model use apply_lora(model, target_modules=...)"
            )
        _check_hyperparameters(r, alpha, dropout, init)
        self._check_base(base, init, variant)
        if init == "pissa" and isinstance(base, QuantizedLinear):
            raise ValueError(
                "init='pissa' rewrites W as its residual, and this base layer is quantised to 4 "
                "bits; PiSSA on a quantised base is not implemented: use init='kaiming'"
            )
        self.base_layer = base
        self.in_features, self.out_features = self._features(base)
        self.r, self.alpha, self.dropout_p = r, alpha, float(dropout)
        self.init, self.use_rslora = init, use_rslora
        self.scaling = lora_scaling(r, alpha, use_rslora)
        like = {"device": base.weight.device, "dtype": base.weight.dtype}
        shape_A, shape_B = self._factor_shapes()
        self.lora_A = nn.Parameter(torch.empty(*shape_A, **like))
        self.lora_B = nn.Parameter(torch.empty(*shape_B, **like))
        # Identity when p = 0, so the common case does no dropout bookkeeping at all.
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.disabled = False  # set by disable_adapters(): the base layer alone answers
        self._init_lora(init)
        _check_variant(variant)
        # The variant is built last: DoRA's magnitude starts from the initialised W + s·B A
        # (computed while the layer is still plain LoRA).
        self.variant = None
        if variant is not None:
            self.variant = variant_class(variant)(self, **(shared or {}))

    #: The layer types this class wraps, and how an error message names them.
    _BASE_TYPES: tuple[type, ...] = (nn.Linear, QuantizedLinear)
    _WRAPS = "an nn.Linear (or a 4-bit QuantizedLinear)"

    def _check_base(self, base: nn.Module, init: str, variant: str | None) -> None:
        """Refuse settings this layer type cannot honour (nothing to refuse for nn.Linear)."""

    def _features(self, base: nn.Module) -> tuple[int, int]:
        """(d_in, d_out) of the base layer."""
        return base.in_features, base.out_features

    def _factor_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The shapes of ``lora_A`` (r, d_in) and ``lora_B`` (d_out, r)."""
        return (self.r, self.in_features), (self.out_features, self.r)

    @torch.no_grad()
    def _init_lora(self, init: str) -> None:
        if init == "pissa":
            A, B, residual = pissa_init(self.base_layer.weight, self.r, self.scaling)
            self.lora_A.copy_(A)
            self.lora_B.copy_(B)
            self.base_layer.weight.copy_(residual)
            return
        if init == "kaiming":
            # a = √5 is nn.Linear's own weight init: A starts like a freshly built layer.
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        else:
            nn.init.normal_(self.lora_A, std=1 / self.r)
        # B = 0 makes ΔW = B A = 0: training starts exactly from the pretrained model.
        nn.init.zeros_(self.lora_B)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., d_in) → (..., d_out), in the base layer's output dtype."""
        y = self.base_layer(x)
        if self.merged or self.disabled:
            return y  # ΔW already lives inside W, or the adapter is switched off
        if self.variant is not None:
            return self.variant(self, x, y)  # e.g. DoRA: the variant applies the update
        return self.lora_forward(x, y)

    def lora_forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Plain LoRA's output ``y + scaling · B A dropout(x)``, from the base output ``y``."""
        x = x.to(self.lora_A.dtype)  # a no-op unless A, B are kept in another dtype than W
        h = F.linear(self.lora_dropout(x), self.lora_A)  # (..., r): the bottleneck x Aᵀ
        # scaling · Bᵀ as a contiguous (r, d_out) matrix: the scaling costs d_out·r multiplies
        # instead of a pass over the whole (..., d_out) update, autograd still gives
        # ∂L/∂B = scaling · Gᵀ h, and this layout keeps the backward matmuls on BLAS's fast paths.
        scaled_Bt = (self.lora_B.t() * self.scaling).contiguous()
        if h.dtype != y.dtype:  # LoRA kept in float32 on a bfloat16 base: round the update once
            return y + (h @ scaled_Bt).to(y.dtype)
        # y + h · scaled_Bt as one fused matmul-add (addmm) on 2-D views: no separate add pass.
        out = torch.addmm(y.reshape(-1, y.shape[-1]), h.reshape(-1, self.r), scaled_Bt)
        return out.view(y.shape)

    def delta_weight(self) -> torch.Tensor:
        """ΔW (d_out, d_in), what ``merge`` adds to W: ``scaling · B A``, or the variant's own."""
        return self.lora_delta_weight() if self.variant is None else self.variant.delta_weight(self)

    def lora_delta_weight(self) -> torch.Tensor:
        """ΔW = scaling · B A, shape (d_out, d_in), in the base weight's dtype."""
        A, B = self.lora_A, self.lora_B
        if A.dtype in (torch.float16, torch.bfloat16):
            A, B = A.float(), B.float()  # the product in float32, rounded once at the end
        return (self.scaling * (B @ A)).to(self.base_layer.weight.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """W ← W + ΔW, so inference costs exactly what the base layer costs.

        Merging twice would add ΔW twice: a second call warns and does nothing (as PEFT does).
        A ΔW holding NaN or Inf (a diverged run) raises ValueError instead of spoiling W.

        On a 4-bit base (``QuantizedLinear``) the merged W + ΔW is rounded to 4 bits again, so
        the merged output differs a little from the unmerged one (PEFT warns the same for a
        QLoRA merge). The original codes and scales are kept as ``base_layer.before_merge``
        (another 4-bit copy while merged) for ``unmerge``.
        """
        if self.merged:
            warnings.warn("LoRALinear is already merged; merge() did nothing", stacklevel=2)
            return
        delta = self.delta_weight()
        if not torch.isfinite(delta).all():
            raise ValueError(
                "ΔW = scaling · B A holds NaN or Inf (training diverged?); refusing to merge it "
                "into the base weight. Inspect lora_A / lora_B, or lower the learning rate."
            )
        four_bit = isinstance(self.base_layer, QuantizedLinear)
        original = self.base_layer.quantized if four_bit else None
        if self.variant is not None:
            self.variant.merge(self)
        else:
            self.base_layer.weight += delta
        if four_bit:  # writing W + ΔW built new codes; the original ones stay for unmerge
            self.base_layer.before_merge = original
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W ← W − ΔW: back to the separate base + LoRA paths (exact up to float rounding).

        Subtracts the *current* ΔW, so change A or B only while unmerged. Unmerging a layer that
        is not merged warns and does nothing.

        On a 4-bit base nothing is subtracted: the codes and scales kept by ``merge`` are put
        back, so W is bit for bit the 4-bit weight it was before the merge (subtracting ΔW from
        the rounded W + ΔW and rounding again would move the frozen base for good, by about 2 %
        of |W| a cycle). A variant still runs its own ``unmerge`` first (DoRA clears the norm it
        kept), and its result is then replaced by the original codes.
        """
        if not self.merged:
            warnings.warn("LoRALinear is not merged; unmerge() did nothing", stacklevel=2)
            return
        original = getattr(self.base_layer, "before_merge", None)
        if self.variant is not None:
            self.variant.unmerge(self)
        elif original is None:
            self.base_layer.weight -= self.delta_weight()
        if original is not None:
            self.base_layer.quantized, self.base_layer.before_merge = original, None
        self.merged = False

    def _apply(self, fn: Any, recurse: bool = True) -> LoRALinear:
        """``nn.Module``'s conversion of every tensor (``.to(dtype)``, ``.half()``, ``.cuda()``),
        then the variant ties again what its layers share: the conversion copies each tensor on
        its own, so a view of a shared tensor (VeRA's A and B) would become a private copy."""
        super()._apply(fn, recurse)
        if self.variant is not None:
            self.variant.tie(self)
        return self

    def extra_repr(self) -> str:
        rs = ", use_rslora=True" if self.use_rslora else ""
        v = "" if self.variant is None else f", variant={type(self.variant).__name__}"
        return (
            f"r={self.r}, alpha={self.alpha}, scaling={self.scaling:.4g}{rs}{v}, "
            f"merged={self.merged}"
        )

"""DoRA, weight-decomposed low-rank adaptation (Liu et al. 2024, arXiv:2402.09353).

DoRA splits each weight into a **magnitude** and a **direction** and lets LoRA move only the
direction, while a trainable vector ``m`` sets the magnitude:

    W' = m ⊙ (W + s·B A) / ‖W + s·B A‖          (one norm, and one m, per output feature)

Which axis? The paper writes W as d × k and takes a *column-wise* norm, with the input as a row
vector (``x W``). PyTorch stores ``nn.Linear.weight`` as (d_out, d_in) and computes ``W x``, so the
paper's columns are PyTorch's **rows**: ``‖·‖`` is taken over ``in_features`` (``dim=1``) and ``m``
has ``d_out`` entries. Normalising the other axis (``dim=0``) gives a different, wrong method.

As the paper's §4.3 recommends (and PEFT does), the norm is treated as a constant in the backward
pass (``.detach()``): gradients reach ``m``, ``A`` and ``B`` but not through the norm.

Imports ``variants.base`` only.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lora_edu.variants.base import LoRALayer, Variant, register_variant


def write_weight(layer: LoRALayer, value: torch.Tensor) -> None:
    """Store ``value`` as the base layer's W: in place for an ``nn.Linear``, rounded to 4 bits
    again for a quantised base (``lora_edu.quant.QuantizedLinear``)."""
    base = layer.base_layer
    if isinstance(base.weight, nn.Parameter):
        base.weight.copy_(value)
    else:
        base.weight = value


@register_variant("dora")
class DoRA(Variant):
    """The magnitude ``m`` (d_out,) of one ``LoRALinear``, initialised to ``‖W + s·B A‖`` per
    output feature (``‖W‖`` when B = 0), so the layer's output is unchanged at step 0."""

    #: this module's parameters under the names PEFT's adapter files use
    peft_keys = {"magnitude": "lora_magnitude_vector"}

    def __init__(self, layer: LoRALayer) -> None:
        super().__init__(layer)
        with torch.no_grad():
            self.magnitude = nn.Parameter(self.weight_norm(layer).clone())
        self._norm_at_merge: torch.Tensor | None = None

    @classmethod
    def peft_config(cls, lora_fields: dict[str, Any]) -> dict[str, Any]:
        """A DoRA adapter is a LORA adapter with ``use_dora``."""
        return {**lora_fields, "use_dora": True}

    @staticmethod
    def weight_norm(layer: LoRALayer) -> torch.Tensor:
        """``‖W + s·B A‖`` over each row (``in_features``): shape (d_out,), no gradient, in the
        dtype of A and B (as PEFT: float32 when they are kept in float32 on a bfloat16 base)."""
        A, B = layer.lora_A.detach(), layer.lora_B.detach()
        weight = layer.base_layer.weight.detach().to(A.dtype)
        return torch.linalg.norm(weight + layer.scaling * (B @ A), dim=1)

    def forward(self, layer: LoRALayer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The adapted output from the input ``x`` and the base layer's output ``y = W x + b``:
        ``(m / ‖W + s·B A‖) ⊙ (W x + s·B A x) + b``, written as a correction added to ``y``.

        Computed in the dtype of A and B, returned in ``y``'s: with A and B in float32 on a
        bfloat16 base, attention would otherwise get a float32 query beside a bfloat16 key."""
        x = x.to(layer.lora_A.dtype)
        scale = self.magnitude / self.weight_norm(layer)  # (d_out,)
        if isinstance(layer.lora_dropout, nn.Identity) or not layer.training:
            bias = layer.base_layer.bias
            base = y if bias is None else y - bias  # W x, re-used from the base layer's output
        else:  # with dropout, both paths of the correction see the same dropped input (as PEFT)
            x = layer.lora_dropout(x)
            base = F.linear(x, layer.base_layer.weight.to(x.dtype))
        update = F.linear(F.linear(x, layer.lora_A), layer.lora_B) * layer.scaling
        return (y + (scale - 1) * base + scale * update).to(y.dtype)

    @torch.no_grad()
    def merge(self, layer: LoRALayer) -> None:
        """W ← (m / ‖W + ΔW‖) ⊙ (W + ΔW); the norm is kept for ``unmerge``. A result holding
        NaN or Inf (a row with ‖W + ΔW‖ = 0, a non-finite m) raises ValueError, W untouched."""
        weight = layer.base_layer.weight
        delta = layer.delta_weight()
        norm = torch.linalg.norm(weight + delta, dim=1)
        merged = (self.magnitude / norm).view(-1, 1) * (weight + delta)
        bad = ~torch.isfinite(merged).all(dim=1)
        if bad.any():
            raise ValueError(
                f"DoRA cannot merge this {_describe(layer)}: m / ‖W + ΔW‖ · (W + ΔW) holds NaN or "
                f"Inf in {int(bad.sum())} row(s) (output features {_few(bad)}; ‖W + ΔW‖ there: "
                f"{_values(norm, bad)}, m: {_values(self.magnitude, bad)}). W is left as it was."
            )
        self._norm_at_merge = norm
        write_weight(layer, merged)

    @torch.no_grad()
    def check_unmerge(self, layer: LoRALayer) -> None:
        """Unmerging divides each row of W by ``m / ‖W + ΔW‖``: a factor of 0 (m = 0) or a
        non-finite one would write Inf or NaN into W. Raise ValueError instead."""
        if self._norm_at_merge is None:
            return
        factor = self.magnitude / self._norm_at_merge
        bad = (factor == 0) | ~torch.isfinite(factor)
        if bad.any():
            raise ValueError(
                f"DoRA cannot unmerge this {_describe(layer)}: merging scaled {int(bad.sum())} "
                f"row(s) of W (output features {_few(bad)}) by m / ‖W + ΔW‖ = "
                f"{_values(factor, bad)} (m: {_values(self.magnitude, bad)}; ‖W + ΔW‖: "
                f"{_values(self._norm_at_merge, bad)}), and dividing by that would write Inf or "
                "NaN into W. W is left merged; reload the base weights instead (a row scaled by "
                "0 is lost)."
            )

    @torch.no_grad()
    def unmerge(self, layer: LoRALayer) -> None:
        """W ← W / (m / ‖W + ΔW‖) − ΔW, with the norm of the merge (exact up to rounding).
        A zero or non-finite factor raises ValueError (``check_unmerge``), W untouched."""
        self.check_unmerge(layer)
        weight = layer.base_layer.weight
        factor = (self.magnitude / self._norm_at_merge).view(-1, 1)
        write_weight(layer, weight / factor - layer.delta_weight())
        self._norm_at_merge = None

    def extra_repr(self) -> str:
        return f"magnitude: ({self.magnitude.shape[0]},), one per output feature"


def _describe(layer: LoRALayer) -> str:
    return f"layer ({type(layer.base_layer).__name__}, {layer.in_features} → {layer.out_features})"


def _few(mask: torch.Tensor, most: int = 5) -> str:
    rows = mask.nonzero().flatten().tolist()
    return ", ".join(map(str, rows[:most])) + (", ..." if len(rows) > most else "")


def _values(tensor: torch.Tensor, mask: torch.Tensor, most: int = 5) -> str:
    values = [f"{v:.3g}" for v in tensor.detach()[mask].flatten().tolist()[:most]]
    return ", ".join(values) + (", ..." if int(mask.sum()) > most else "")

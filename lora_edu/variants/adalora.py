"""AdaLoRA, adaptive budget allocation (Zhang et al. 2023, arXiv:2303.10512).

LoRA gives every adapted matrix the same rank. AdaLoRA starts every matrix at ``init_r`` and
moves rank to where it matters, ending at an average ``target_r``. The update is written like
an SVD, so that one rank is one removable triplet (a column of P, a value, a row of Q):

    ΔW = P Λ Q · α / r       P = lora_B (d_out, r),  Λ = diag(lora_E) (r,),  Q = lora_A (r, d_in)

- **Orthogonality**: the loss gets ``orth_reg_weight × mean(‖Q Qᵀ − I‖_F, ‖Pᵀ P − I‖_F)``, which
  keeps P and Q close to orthogonal, so that Λ's entries behave like singular values.
- **Importance**: for every entry w of P, Λ, Q, the sensitivity I = |w · ∂L/∂w|, smoothed over
  steps (Ī ← β₁ Ī + (1 − β₁) I) and multiplied by its uncertainty (Ū ← β₂ Ū + (1 − β₂)|I − Ī|).
  A triplet's score is its value's score plus the mean score of its column of P and row of Q.
- **Budget**: the total rank falls from ``init_r × layers`` to ``target_r × layers`` along a cubic
  schedule between step ``tinit`` and ``total − tfinal``; every ``deltaT`` steps the values Λ of
  the lowest-scoring triplets are set to 0. In the last ``tfinal`` steps the final pattern is
  kept fixed.

This module holds the layer; ``rank_allocator.py`` the regulariser, scores and schedule. Equal to
PEFT (``peft.AdaLoraConfig``, ``RankAllocator``): initialisation (Λ = 0; P, Q ~ N(0, 0.02²)),
scaling α / (r + 1e-5), the regulariser, the scores and the masks at each step.

Imports ``variants.base`` and ``variants.rank_allocator`` (which builds on ``base`` only).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lora_edu.variants.base import LoRALayer, Variant, register_variant
from lora_edu.variants.rank_allocator import RankAllocator, orthogonality


@register_variant("adalora")
class AdaLoRA(Variant):
    """The singular values ``lora_E`` (r, 1) of one layer; its A and B are Q and P."""

    peft_keys = {"lora_E": "lora_E"}
    lora_key_suffix = ""  # PEFT stores AdaLoRA's A and B as bare parameters, not as .weight

    @classmethod
    def peft_config(cls, lora_fields: dict[str, Any]) -> dict[str, Any]:
        """PEFT's ADALORA fields. The schedule fields describe no training (PEFT requires them);
        pruned triplets are saved at full size with their singular value 0, so no
        ``rank_pattern`` is needed."""
        r, alpha, dropout = lora_fields["r"], lora_fields["lora_alpha"], lora_fields["lora_dropout"]
        return {"peft_type": "ADALORA", "init_r": r, "target_r": r, "total_step": 1, "tinit": 0,
                "tfinal": 0, "rank_pattern": None, "init_lora_weights": True, "lora_alpha": alpha,
                "lora_dropout": dropout}  # fmt: skip

    @classmethod
    def allocator(
        cls, layers: dict[str, LoRALayer], total_steps: int, **settings: Any
    ) -> RankAllocator:
        """The rank allocator of these AdaLoRA layers (settings: ``AdaLoRASchedule``)."""
        return RankAllocator(layers, total_steps, **settings)

    def __init__(self, layer: LoRALayer) -> None:
        super().__init__(layer)
        if layer.init == "pissa":
            raise ValueError("AdaLoRA initialises its own P, Λ, Q; init='pissa' is for LoRA")
        with torch.no_grad():
            nn.init.normal_(layer.lora_A, std=0.02)
            nn.init.normal_(layer.lora_B, std=0.02)
        self.lora_E = nn.Parameter(layer.lora_A.new_zeros(layer.r, 1))  # ΔW = 0 at step 0
        self.scaling = layer.alpha / (layer.r + 1e-5)

    def forward(self, layer: LoRALayer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``y + P Λ Q x · α / (r + 1e-5)``, computed in the dtype of P, Λ, Q, returned in ``y``'s."""
        x = layer.lora_dropout(x.to(layer.lora_A.dtype))
        update = x @ (layer.lora_A * self.lora_E).T @ layer.lora_B.T
        return (y + update * layer.alpha / (layer.r + 1e-5)).to(y.dtype)

    def delta_weight(self, layer: LoRALayer) -> torch.Tensor:
        delta = layer.lora_B @ (layer.lora_A * self.lora_E) * self.scaling
        return delta.to(layer.base_layer.weight.dtype)

    def rank(self) -> int:
        """The triplets still in use (non-zero singular values)."""
        return int((self.lora_E != 0).sum())

    @staticmethod
    def orthogonality(layer: LoRALayer) -> torch.Tensor:
        """‖Q Qᵀ − I‖_F + ‖Pᵀ P − I‖_F for this layer (``rank_allocator.orthogonality``)."""
        return orthogonality(layer)

    def extra_repr(self) -> str:
        return f"lora_E: ({self.lora_E.shape[0]}, 1), rank in use {self.rank()}"

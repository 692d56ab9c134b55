"""What every LoRA variant may change, with plain LoRA's behaviour as the default.

A variant is kept by its ``LoRALinear`` as ``layer.variant`` and asked, at each point where
LoRA's recipe could differ, what to do:

=====================  ======================================  =================================
hook                   plain LoRA (this class)                 overridden by
=====================  ======================================  =================================
``forward``            ``y + scaling · B A x``                 DoRA, VeRA
``delta_weight``       ``ΔW = scaling · B A``                  VeRA (``Λ_b B Λ_d A``)
``merge``/``unmerge``  ``W ← W ± ΔW``                          DoRA (rescales the rows)
``frozen``             A and B train                           LoRA-FA (A frozen), VeRA (both)
training               AdamW on the loss                       AdaLoRA (``RankAllocator``)
``lr_factors``         one learning rate                       LoRA+ (B learns 16× faster)
``saves_lora``         A and B go into the adapter file        VeRA (shared, saved once)
=====================  ======================================  =================================

Parameters a variant adds (DoRA's magnitude, VeRA's scaling vectors) train and are saved with the
adapter, under the PEFT key each names in ``peft_keys``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

if TYPE_CHECKING:
    from lora_edu.lora import LoRALinear


def write_weight(layer: LoRALinear, value: torch.Tensor) -> None:
    """Store ``value`` as the base layer's W: in place for an ``nn.Linear``, rounded to 4 bits
    again for a quantised base (``lora_edu.quant.QuantizedLinear``)."""
    base = layer.base_layer
    if isinstance(base.weight, nn.Parameter):
        base.weight.copy_(value)
    else:
        base.weight = value


class Variant(nn.Module):
    """Plain LoRA; subclasses override the hooks their method changes."""

    #: this module's parameters → the names PEFT's adapter files use for them
    peft_keys: ClassVar[dict[str, str]] = {}
    #: the layer's parameters ("lora_A", "lora_B") that stay frozen during training
    frozen: ClassVar[tuple[str, ...]] = ()
    #: the layer's parameters that learn at ``factor × lr`` (read by ``optimizer_param_groups``)
    lr_factors: ClassVar[dict[str, float]] = {}
    #: whether the layer's A and B are written into the adapter file
    saves_lora: ClassVar[bool] = True
    #: the suffix of A's and B's keys in PEFT's files (``lora_A.weight``; AdaLoRA: none)
    lora_key_suffix: ClassVar[str] = ".weight"

    def __init__(self, layer: LoRALinear, **shared: Any) -> None:
        super().__init__()

    @classmethod
    def shared_state(cls, layers: list[nn.Linear], r: int) -> dict[str, Any]:
        """State shared by every adapted layer of a model (VeRA's random matrices), built once
        by ``apply_lora`` from the layers about to be wrapped and passed to each constructor."""
        return {}

    def forward(self, layer: LoRALinear, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The adapted output from the input ``x`` and the base layer's output ``y``."""
        return layer.lora_forward(x, y)

    def delta_weight(self, layer: LoRALinear) -> torch.Tensor:
        """ΔW (d_out, d_in): what ``merge`` adds to W."""
        return layer.lora_delta_weight()

    @torch.no_grad()
    def merge(self, layer: LoRALinear) -> None:
        layer.base_layer.weight += layer.delta_weight()

    @torch.no_grad()
    def unmerge(self, layer: LoRALinear) -> None:
        layer.base_layer.weight -= layer.delta_weight()

    def check_unmerge(self, layer: LoRALinear) -> None:
        """Raise ValueError if ``unmerge`` cannot restore W (plain LoRA always can); called
        for every layer by ``unmerge_lora`` before any W changes."""

    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors saved once per model, not per layer (keys relative to ``base_model.``)."""
        return {}

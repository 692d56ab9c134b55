"""LoRA's descendants as small strategy modules that plug into the one ``LoRALinear``.

A variant is an ``nn.Module`` kept as ``layer.variant``; the layer asks it how to apply the update,
what to merge, which of A and B train and at which learning rate (``base.Variant`` lists the
hooks, with plain LoRA's answers). Its own parameters train and are saved with ``lora_A`` and
``lora_B``, under the PEFT key each names in ``peft_keys``. Choose one with
``LoRAConfig(..., variant="dora")``.
"""

from __future__ import annotations

from lora_edu.variants.adalora import AdaLoRA
from lora_edu.variants.base import Variant
from lora_edu.variants.dora import DoRA
from lora_edu.variants.lora_fa import LoRAFA
from lora_edu.variants.lora_plus import LORA_PLUS_RATIO, LoRAPlus
from lora_edu.variants.rank_allocator import RankAllocator
from lora_edu.variants.vera import VeRA

#: variant name (``LoRAConfig.variant``) → its class, built as ``cls(layer, **shared)``.
VARIANTS: dict[str, type[Variant]] = {
    "dora": DoRA,
    "vera": VeRA,
    "adalora": AdaLoRA,
    "lora-fa": LoRAFA,
    "lora-plus": LoRAPlus,
}

__all__ = [
    "LORA_PLUS_RATIO", "VARIANTS", "AdaLoRA", "DoRA", "LoRAFA", "LoRAPlus", "RankAllocator", "VeRA",
    "Variant",
]  # fmt: skip

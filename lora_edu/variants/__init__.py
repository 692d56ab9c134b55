"""LoRA's descendants as small strategy modules that plug into the one ``LoRALinear``.

A variant is an ``nn.Module`` kept as ``layer.variant``; the layer asks it how to apply the update,
what to merge, which of A and B train and at which learning rate (``base.Variant`` lists the
hooks, with plain LoRA's answers). Its own parameters train and are saved with ``lora_A`` and
``lora_B``, under the PEFT key each names in ``peft_keys``. Choose one with
``LoRAConfig(..., variant="dora")``.

Each variant module registers its class by name (``@register_variant("dora")``); the layer looks
it up with ``variant_class(name)`` and imports no variant. This file imports every variant module
so that the registry is complete; a new variant is one new module plus one import line here.
The modules import ``variants.base`` (and AdaLoRA its ``rank_allocator``), never the layer.
"""

from __future__ import annotations

# isort: off
# The registry (and every list of choices shown to users) keeps this import order.
from lora_edu.variants.dora import DoRA
from lora_edu.variants.vera import VeRA
from lora_edu.variants.adalora import AdaLoRA
from lora_edu.variants.lora_fa import LoRAFA
from lora_edu.variants.lora_plus import LORA_PLUS_RATIO, LoRAPlus

# isort: on
from lora_edu.variants.base import VARIANTS, Variant, register_variant, variant_class
from lora_edu.variants.rank_allocator import RankAllocator

__all__ = [
    "LORA_PLUS_RATIO", "VARIANTS", "AdaLoRA", "DoRA", "LoRAFA", "LoRAPlus", "RankAllocator", "VeRA",
    "Variant", "register_variant", "variant_class",
]  # fmt: skip

"""LoRA+, LoRA with a larger learning rate for B (Hayou et al. 2024, arXiv:2402.12354).

B starts at zero and A at random, and with one learning rate for both the update is learned
inefficiently when layers are wide: the paper's analysis sets B's rate to ``ratio × lr`` with
ratio ≈ 16. The model and its adapter file are plain LoRA; only the optimizer differs, through
``lr_factors`` (the training loop builds its AdamW groups with ``optimizer_param_groups``). For
another ratio, build the optimizer yourself with ``lora_plus_param_groups(model, lr, ratio)``.

Imports ``variants.base`` only.
"""

from __future__ import annotations

from lora_edu.variants.base import Variant, register_variant

#: B's learning rate over A's: the paper's recommended value.
LORA_PLUS_RATIO = 16.0


@register_variant("lora-plus")
class LoRAPlus(Variant):
    """B learns at ``LORA_PLUS_RATIO × lr``; everything else as plain LoRA."""

    lr_factors = {"lora_B": LORA_PLUS_RATIO}

    def extra_repr(self) -> str:
        return f"lora_B learns at {LORA_PLUS_RATIO:g} × lr"

"""LoRA's descendants as small strategy modules that plug into the one ``LoRALinear``.

A variant is an ``nn.Module`` kept as ``layer.variant``; the layer hands it the input and the
base layer's output, and it returns the adapted output (and merges itself into the base weight).
Its parameters train and are saved with ``lora_A`` and ``lora_B``, under the PEFT key each names
in ``peft_keys``. Choose one with ``LoRAConfig(..., variant="dora")``.
"""

from __future__ import annotations

from lora_edu.variants.dora import DoRA

#: variant name (``LoRAConfig.variant``) → its class, built as ``cls(layer)``.
VARIANTS = {"dora": DoRA}

__all__ = ["VARIANTS", "DoRA"]

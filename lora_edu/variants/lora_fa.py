"""LoRA-FA, LoRA with a frozen A (Zhang et al. 2023, arXiv:2308.03303).

A keeps its random initialisation and only B trains: the update ΔW = s·B A then lies in the
fixed r-dimensional row space of A, like a random projection of the input followed by a trained
output map. What this buys is memory: the backward pass needs A x (r numbers per token) instead
of x (d_in numbers) to form B's gradient, and A has no gradient or optimizer state at all. At
the same rank it trains half the parameters of LoRA (d_out·r instead of (d_in + d_out)·r), so at
an equal budget it runs at twice LoRA's rank.

(PEFT's ``create_lorafa_optimizer`` implements a later method of the same name, Wang et al. 2025,
which also rescales B's gradient; this module is the original, A frozen and nothing else.) The
adapter file is a plain LoRA file: A and B are all it needs.

Imports ``variants.base`` only.
"""

from __future__ import annotations

from lora_edu.variants.base import Variant, register_variant


@register_variant("lora-fa")
class LoRAFA(Variant):
    """A frozen after initialisation; B trains."""

    frozen = ("lora_A",)

    def extra_repr(self) -> str:
        return "lora_A frozen, lora_B trains"

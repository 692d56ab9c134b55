"""VeRA, vector-based random matrix adaptation (Kopiczko et al. 2024, arXiv:2310.11454).

LoRA trains A and B in every layer. VeRA draws **one** random pair for the whole model, freezes
it, and trains only two scaling vectors per layer:

    y = W x + Λ_b B Λ_d A x        Λ_d = diag(λ_d) (r, r),  Λ_b = diag(λ_b) (d_out, d_out)

A (r, max d_in) and B (max d_out, r) are shared: a layer uses their top-left corner
``A[:, :d_in]``, ``B[:d_out, :]``. The pair lives in one ``SharedProjection`` module that every
layer holds, so the model has one copy, through ``model.to(dtype)`` and loading too. A layer trains
r + d_out numbers instead of LoRA's r·(d_in + d_out): at r = 256 on a 384-wide layer that is 640
against LoRA r=8's 6,144. Because A is random and frozen, r can be large; what trains is which
of its r random directions to use (λ_d) and how much of each output feature to change (λ_b).

As in PEFT (``peft.VeraConfig``): A and B come from PEFT's Kaiming-uniform draw (bound
√6/√fan_in) with a generator seeded by ``projection_prng_key`` (0), A first; λ_b starts at 0 (so
ΔW = 0 and the model starts as the base model) and λ_d at 0.1; there is no alpha/r scaling. The
adapter file stores λ_b and λ_d per layer and A, B once (PEFT's ``save_projection=True``).

Imports ``variants.base`` only.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lora_edu.variants.base import LoRALayer, Variant, register_variant

#: PEFT's defaults: the seed of the shared matrices and λ_d's starting value.
PROJECTION_PRNG_KEY, D_INITIAL = 0, 0.1


def kaiming_uniform(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """U(−b, b) with b = √3 · √2 / √fan_in, fan_in = shape[1]: PEFT's ``_kaiming_init``."""
    bound = math.sqrt(3.0) * math.sqrt(2) / math.sqrt(shape[1])
    return torch.empty(shape).uniform_(-bound, bound, generator=generator)


class SharedProjection(nn.Module):
    """The model's one random pair, ``vera_A`` (r, largest d_in) and ``vera_B`` (largest d_out,
    r), as buffers of one module that every VeRA layer registers as its submodule ``projection``.

    One module, so one tensor each: ``model.to(torch.bfloat16)`` converts it once (later visits
    find it converted), and loading an adapter writes the one copy every layer reads. The buffers
    are not saved with the model's state dict; the adapter file stores them once.
    """

    def __init__(self, vera_A: torch.Tensor, vera_B: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("vera_A", vera_A, persistent=False)
        self.register_buffer("vera_B", vera_B, persistent=False)

    def extra_repr(self) -> str:
        return f"vera_A: {tuple(self.vera_A.shape)}, vera_B: {tuple(self.vera_B.shape)}, shared"


@register_variant("vera")
class VeRA(Variant):
    """Trainable ``lambda_d`` (r,) and ``lambda_b`` (d_out,); the layer's A and B are frozen
    views of the top-left corners of the model's shared random pair."""

    peft_keys = {"lambda_b": "vera_lambda_b", "lambda_d": "vera_lambda_d"}
    frozen = ("lora_A", "lora_B")
    saves_lora = False

    @classmethod
    def shared_state(cls, layers: list[nn.Module], r: int) -> dict[str, Any]:
        """The pair, drawn as PEFT draws it, in the first layer's device and dtype (cast once,
        here, not per layer: a copy per layer would no longer be shared)."""
        generator = torch.Generator().manual_seed(PROJECTION_PRNG_KEY)
        d_in = max(layer.in_features for layer in layers)
        d_out = max(layer.out_features for layer in layers)
        vera_A = kaiming_uniform((r, d_in), generator)
        vera_B = kaiming_uniform((d_out, r), generator)
        weight = layers[0].weight
        like = {"device": weight.device, "dtype": weight.dtype}
        return {"projection": SharedProjection(vera_A.to(**like), vera_B.to(**like))}

    @classmethod
    def peft_config(cls, lora_fields: dict[str, Any]) -> dict[str, Any]:
        """PEFT's VERA fields: no alpha (no scaling), the pair saved in the file."""
        return {
            "peft_type": "VERA",
            "r": lora_fields["r"],
            "projection_prng_key": PROJECTION_PRNG_KEY,
            "save_projection": True,
            "vera_dropout": lora_fields["lora_dropout"],
            "d_initial": D_INITIAL,
            "init_weights": True,
        }

    def __init__(self, layer: LoRALayer, projection: SharedProjection) -> None:
        super().__init__(layer)
        if layer.init == "pissa":
            raise ValueError("VeRA's A and B are shared random matrices; init='pissa' is for LoRA")
        like = {"device": layer.base_layer.weight.device, "dtype": layer.base_layer.weight.dtype}
        self.projection = projection  # the same module in every layer
        self.lambda_d = nn.Parameter(torch.full((layer.r,), D_INITIAL, **like))
        self.lambda_b = nn.Parameter(torch.zeros(layer.out_features, **like))
        self.tie(layer)

    @property
    def vera_A(self) -> torch.Tensor:
        """The shared A (r, largest d_in)."""
        return self.projection.vera_A

    @property
    def vera_B(self) -> torch.Tensor:
        """The shared B (largest d_out, r)."""
        return self.projection.vera_B

    def tie(self, layer: LoRALayer) -> None:
        """The layer's A and B become frozen views of the shared pair: one copy in memory.
        Called again by the layer after ``model.to(...)``, which copies each view on its own."""
        layer.lora_A = nn.Parameter(self.vera_A[:, : layer.in_features], requires_grad=False)
        layer.lora_B = nn.Parameter(self.vera_B[: layer.out_features, :], requires_grad=False)

    def _pair(self, layer: LoRALayer, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer's A (r, d_in) and B (d_out, r), sliced from the shared pair at use time and
        cast to ``dtype`` (a no-op unless λ is kept in another dtype than the pair)."""
        A = self.vera_A[:, : layer.in_features].to(dtype)
        B = self.vera_B[: layer.out_features, :].to(dtype)
        return A, B

    def forward(self, layer: LoRALayer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``y + λ_b ⊙ B (λ_d ⊙ A x)``, computed in λ's dtype, returned in ``y``'s."""
        x = layer.lora_dropout(x.to(self.lambda_d.dtype))
        A, B = self._pair(layer, x.dtype)
        h = self.lambda_d * F.linear(x, A)  # (..., r)
        return (y + self.lambda_b * F.linear(h, B)).to(y.dtype)

    def delta_weight(self, layer: LoRALayer) -> torch.Tensor:
        """ΔW = Λ_b B Λ_d A (d_out, d_in), in float32 for 16-bit λ (rounded once at the end)."""
        lambda_b, lambda_d = self.lambda_b, self.lambda_d
        if lambda_d.dtype in (torch.float16, torch.bfloat16):
            lambda_b, lambda_d = lambda_b.float(), lambda_d.float()
        A, B = self._pair(layer, lambda_d.dtype)
        delta = (lambda_b[:, None] * B) @ (lambda_d[:, None] * A)
        return delta.to(layer.base_layer.weight.dtype)

    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        return {"vera_A": self.vera_A, "vera_B": self.vera_B}

    def extra_repr(self) -> str:
        return f"lambda_d: ({self.lambda_d.shape[0]},), lambda_b: ({self.lambda_b.shape[0]},)"

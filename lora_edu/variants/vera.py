"""VeRA, vector-based random matrix adaptation (Kopiczko et al. 2024, arXiv:2310.11454).

LoRA trains A and B in every layer. VeRA draws **one** random pair for the whole model, freezes
it, and trains only two scaling vectors per layer:

    y = W x + Λ_b B Λ_d A x        Λ_d = diag(λ_d) (r, r),  Λ_b = diag(λ_b) (d_out, d_out)

A (r, max d_in) and B (max d_out, r) are shared: a layer uses their top-left corner
``A[:, :d_in]``, ``B[:d_out, :]`` (here as views, so the model holds one copy). A layer trains
r + d_out numbers instead of LoRA's r·(d_in + d_out): at r = 256 on a 384-wide layer that is 640
against LoRA r=8's 6,144. Because A is random and frozen, r can be large; what trains is which
of its r random directions to use (λ_d) and how much of each output feature to change (λ_b).

As in PEFT (``peft.VeraConfig``): A and B come from PEFT's Kaiming-uniform draw (bound
√6/√fan_in) with a generator seeded by ``projection_prng_key`` (0), A first; λ_b starts at 0 (so
ΔW = 0 and the model starts as the base model) and λ_d at 0.1; there is no alpha/r scaling. The
adapter file stores λ_b and λ_d per layer and A, B once (PEFT's ``save_projection=True``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from lora_edu.variants.base import Variant

if TYPE_CHECKING:
    from lora_edu.lora import LoRALinear

#: PEFT's defaults: the seed of the shared matrices and λ_d's starting value.
PROJECTION_PRNG_KEY, D_INITIAL = 0, 0.1


def kaiming_uniform(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """U(−b, b) with b = √3 · √2 / √fan_in, fan_in = shape[1]: PEFT's ``_kaiming_init``."""
    bound = math.sqrt(3.0) * math.sqrt(2) / math.sqrt(shape[1])
    return torch.empty(shape).uniform_(-bound, bound, generator=generator)


class VeRA(Variant):
    """Trainable ``lambda_d`` (r,) and ``lambda_b`` (d_out,); the layer's A and B are frozen
    slices of the model's shared random matrices."""

    peft_keys = {"lambda_b": "vera_lambda_b", "lambda_d": "vera_lambda_d"}
    frozen = ("lora_A", "lora_B")
    saves_lora = False

    @classmethod
    def shared_state(cls, layers: list[nn.Linear], r: int) -> dict[str, Any]:
        """A (r, largest d_in) and B (largest d_out, r), drawn as PEFT draws them."""
        generator = torch.Generator().manual_seed(PROJECTION_PRNG_KEY)
        d_in = max(layer.in_features for layer in layers)
        d_out = max(layer.out_features for layer in layers)
        vera_A = kaiming_uniform((r, d_in), generator)
        return {"vera_A": vera_A, "vera_B": kaiming_uniform((d_out, r), generator)}

    def __init__(self, layer: LoRALinear, vera_A: torch.Tensor, vera_B: torch.Tensor) -> None:
        super().__init__(layer)
        if layer.init == "pissa":
            raise ValueError("VeRA's A and B are shared random matrices; init='pissa' is for LoRA")
        like = {"device": layer.base_layer.weight.device, "dtype": layer.base_layer.weight.dtype}
        # Kept (not saved per layer) so that the adapter file can store them once.
        self.register_buffer("vera_A", vera_A.to(**like), persistent=False)
        self.register_buffer("vera_B", vera_B.to(**like), persistent=False)
        # The layer's A and B become views of the shared matrices: one copy in memory.
        layer.lora_A = nn.Parameter(self.vera_A[:, : layer.in_features], requires_grad=False)
        layer.lora_B = nn.Parameter(self.vera_B[: layer.out_features, :], requires_grad=False)
        self.lambda_d = nn.Parameter(torch.full((layer.r,), D_INITIAL, **like))
        self.lambda_b = nn.Parameter(torch.zeros(layer.out_features, **like))

    def forward(self, layer: LoRALinear, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``y + λ_b ⊙ B (λ_d ⊙ A x)``."""
        x = layer.lora_dropout(x.to(self.lambda_d.dtype))
        h = self.lambda_d * F.linear(x, layer.lora_A)  # (..., r)
        return y + (self.lambda_b * F.linear(h, layer.lora_B)).to(y.dtype)

    def delta_weight(self, layer: LoRALinear) -> torch.Tensor:
        """ΔW = Λ_b B Λ_d A (d_out, d_in)."""
        B = self.lambda_b[:, None] * layer.lora_B
        return (B @ (self.lambda_d[:, None] * layer.lora_A)).to(layer.base_layer.weight.dtype)

    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        return {"vera_A": self.vera_A, "vera_B": self.vera_B}

    def extra_repr(self) -> str:
        return f"lambda_d: ({self.lambda_d.shape[0]},), lambda_b: ({self.lambda_b.shape[0]},)"

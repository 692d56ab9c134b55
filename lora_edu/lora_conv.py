"""LoRA for 2-D convolutions: ``LoRAConv2d``, PEFT's ``lora.Conv2d`` layout.

A convolution's weight ``W (c_out, c_in, k_h, k_w)`` is a linear map from each ``c_in × k_h × k_w``
input patch to ``c_out`` channels. LoRA factors its update the same way as for a linear layer:

* ``A (r, c_in, k_h, k_w)``, a k×k convolution with the base layer's stride and padding, down to
  ``r`` channels;
* ``B (c_out, r, 1, 1)``, a 1×1 convolution back up to ``c_out`` channels;
* ``ΔW = scaling · B A`` with ``ΔW[o, i, h, w] = scaling · Σ_m B[o, m] A[m, i, h, w]``.

Convolving with A then with the 1×1 B is convolving with ΔW, so merging is exact. The factors
are stored under PEFT's names and shapes (``lora_A.weight``, ``lora_B.weight``), so adapters move
between ``lora_edu`` and ``peft`` in both directions.

Imports only the layer it extends (``lora_layer``); ``lora_model.apply_lora`` picks this class
for an ``nn.Conv2d`` target.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lora_edu.lora_layer import LoRALinear


class LoRAConv2d(LoRALinear):
    """``y = conv(x) + scaling · B(A(dropout(x)))`` for an ``nn.Conv2d`` base layer.

    Same arguments and behaviour as ``LoRALinear`` (merge, unmerge, disable, save/load), with
    ``lora_A`` of shape ``(r, c_in, k_h, k_w)`` and ``lora_B`` of shape ``(c_out, r, 1, 1)``.
    Grouped or dilated convolutions, a padding mode other than zeros, LoRA's variants and PiSSA
    are refused with a message (PEFT does not merge grouped ones either).
    """

    _BASE_TYPES = (nn.Conv2d,)
    _WRAPS = "an nn.Conv2d"

    def _check_base(self, base: nn.Module, init: str, variant: str | None) -> None:
        problems = {
            "groups": (base.groups, 1),
            "dilation": (tuple(base.dilation), (1, 1)),
            "padding_mode": (base.padding_mode, "zeros"),
            "padding": (base.padding, "not 'same'/'valid' strings"),
        }
        for name, (value, wanted) in problems.items():
            bad = isinstance(value, str) if name == "padding" else value != wanted
            if bad:
                raise ValueError(
                    f"LoRAConv2d supports plain convolutions; this one has {name}={value!r} "
                    f"(expected {wanted!r})"
                )
        if variant is not None or init == "pissa":
            raise ValueError(
                "LoRAConv2d implements plain LoRA (init 'kaiming' or 'gaussian'); got "
                f"variant={variant!r}, init={init!r}"
            )

    def _features(self, base: nn.Module) -> tuple[int, int]:
        return base.in_channels, base.out_channels

    def _factor_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        k_h, k_w = self.base_layer.kernel_size
        return (self.r, self.in_features, k_h, k_w), (self.out_features, self.r, 1, 1)

    def lora_forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``y + scaling · conv1×1(conv_k×k(dropout(x), A), B)``: x (N, c_in, H, W)."""
        base = self.base_layer
        h = F.conv2d(self.lora_dropout(x.to(self.lora_A.dtype)), self.lora_A, None, base.stride,
                     base.padding)  # fmt: skip
        return y + (self.scaling * F.conv2d(h, self.lora_B)).to(y.dtype)

    def lora_delta_weight(self) -> torch.Tensor:
        """ΔW = scaling · B A as a convolution kernel ``(c_out, c_in, k_h, k_w)``."""
        A, B = self.lora_A, self.lora_B
        if A.dtype in (torch.float16, torch.bfloat16):
            A, B = A.float(), B.float()
        delta = torch.einsum("om,mihw->oihw", B[:, :, 0, 0], A)
        return (self.scaling * delta).to(self.base_layer.weight.dtype)

    def extra_repr(self) -> str:
        return f"kernel={tuple(self.base_layer.kernel_size)}, " + super().extra_repr()

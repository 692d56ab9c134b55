"""loralib, the LoRA paper's own code (microsoft/LoRA), computes what ``LoRALinear`` computes:
the same shapes (A: (r, d_in), B: (d_out, r)), the same initialisation (A Kaiming-uniform, B zero),
the same scaling α/r, the same output and the same merged weight. Skipped where loralib is not
installed (``pip install loralib``; it is in the ``learn`` and ``test`` extras)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lora_edu.lora import LoRALinear

loralib = pytest.importorskip("loralib")


def pair(fan_in_fan_out: bool = False) -> tuple[nn.Module, LoRALinear]:
    """loralib's Linear (r = 4, α = 8) and ours around the same W, b, with the same A and a
    non-zero B (loralib starts B at zero, as we do)."""
    torch.manual_seed(0)
    ref = loralib.Linear(16, 12, r=4, lora_alpha=8, fan_in_fan_out=fan_in_fan_out)
    weight = ref.weight.detach().T if fan_in_fan_out else ref.weight.detach()
    base = nn.Linear(16, 12)
    with torch.no_grad():
        base.weight.copy_(weight)
        base.bias.copy_(ref.bias)
        ref.lora_B.normal_(std=0.1)
    ours = LoRALinear(base, r=4, alpha=8)
    with torch.no_grad():
        ours.lora_A.copy_(ref.lora_A)
        ours.lora_B.copy_(ref.lora_B)
    return ref, ours


def test_loralib_and_ours_share_shapes_initialisation_and_scaling():
    torch.manual_seed(1)
    ref = loralib.Linear(16, 12, r=4, lora_alpha=8)
    ours = LoRALinear(nn.Linear(16, 12), r=4, alpha=8)
    assert ref.lora_A.shape == ours.lora_A.shape == (4, 16)  # A: (r, d_in)
    assert ref.lora_B.shape == ours.lora_B.shape == (12, 4)  # B: (d_out, r)
    assert ref.scaling == ours.scaling == 8 / 4
    bound = 1 / math.sqrt(16)  # kaiming_uniform_(a=√5) on fan_in = d_in
    for A in (ref.lora_A, ours.lora_A):
        assert A.abs().max() <= bound and A.abs().max() > bound / 2
    assert not ref.lora_B.any() and not ours.lora_B.any()
    assert not ref.weight.requires_grad


@pytest.mark.parametrize("fan_in_fan_out", [False, True])
def test_loralib_output_and_merge_equal_ours(fan_in_fan_out):
    ref, ours = pair(fan_in_fan_out)
    x = torch.randn(5, 16)
    ref.train()
    assert torch.allclose(ref(x), ours(x), atol=1e-6)
    ref.eval()  # loralib merges B A · α/r into W when put in eval mode
    ours.merge()
    merged = ref.weight.T if fan_in_fan_out else ref.weight
    assert torch.allclose(merged, ours.base_layer.weight, atol=1e-6)
    assert torch.allclose(ref(x), ours(x), atol=1e-6)

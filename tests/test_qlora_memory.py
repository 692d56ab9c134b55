"""QLoRA's memory claim: a 4-bit base keeps only its codes and scales for the backward pass.

Training LoRA on a frozen float32 base stores every base weight W (d_out, d_in) for backward
(``grad_x = grad_y W``). QLoRA's point is that a 4-bit base does not: the forward saves the codes
and scales and the backward dequantises W again. These tests watch what autograd saves
(``torch.autograd.graph.saved_tensors_hooks``) and check that the gradients did not change.
"""

from collections import OrderedDict

import pytest
import torch
from torch import nn

from lora_edu import quant
from lora_edu.lora import LoRAConfig, LoRALinear, apply_lora, mark_only_lora_trainable

D = 256  # the MLP's width: each base weight is D × D


def qlora_mlp(seed: int = 0) -> nn.Module:
    """Two 256 × 256 linear layers with LoRA (r = 4) on an NF4 base; B ≠ 0 so both paths count."""
    torch.manual_seed(seed)
    model = nn.Sequential(OrderedDict(up=nn.Linear(D, D), act=nn.ReLU(), down=nn.Linear(D, D)))
    apply_lora(model, LoRAConfig(["up", "down"], r=4, alpha=8, quantize="nf4"))
    mark_only_lora_trainable(model)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoRALinear):
                module.lora_B.normal_(std=0.05)
    return model


def saved_for_backward(model: nn.Module, x: torch.Tensor) -> list[tuple[tuple, torch.dtype, int]]:
    """(shape, dtype, bytes) of every tensor autograd saves during one forward of ``model``."""
    saved = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append((tuple(t.shape), t.dtype, t.numel() * t.element_size()))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x).sum().backward()
    return saved


def test_a_4bit_base_saves_no_float_weight_for_backward():
    model = qlora_mlp()
    x = torch.randn(8, D, requires_grad=True)  # grad_x needs W in both layers' backward
    saved = saved_for_backward(model, x)
    full = [s for s in saved if s[0] == (D, D) and s[1] == torch.float32]
    assert not full, f"float32 base weights saved for backward: {full}"
    weights_fp32 = 2 * D * D * 4
    total = sum(nbytes for _, _, nbytes in saved)
    assert total < weights_fp32 / 4, f"{total:,} bytes saved vs {weights_fp32:,} of fp32 weights"
    # the codes are what the backward uses (D·D/2 bytes a layer), and nothing keeps a copy of W
    assert any(s[0] == (D * D // 2,) and s[1] == torch.uint8 for s in saved)
    for module in model.modules():
        if isinstance(module, quant.QuantizedLinear):
            tensors = [*module.parameters(), *module.buffers()]
            tensors += [v for v in vars(module).values() if isinstance(v, torch.Tensor)]
            assert all(t.numel() < D * D for t in tensors)


def test_a_float_base_saves_its_weight_which_the_4bit_base_avoids():
    """The control: the same model without ``quantize`` saves each float32 W for backward."""
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(up=nn.Linear(D, D), act=nn.ReLU(), down=nn.Linear(D, D)))
    apply_lora(model, LoRAConfig(["up", "down"], r=4, alpha=8))
    mark_only_lora_trainable(model)
    saved = saved_for_backward(model, torch.randn(8, D, requires_grad=True))
    assert sum(s[0] == (D, D) and s[1] == torch.float32 for s in saved) == 2


@pytest.mark.parametrize("variant", [None, "dora"])
@pytest.mark.parametrize("double_quant", [False, True])
def test_gradients_through_a_4bit_base_equal_a_float_reference(variant, double_quant):
    """The same layer on ``nn.Linear(W_4bit)`` (W dequantised once, kept in float32) gives the
    same output and the same gradients for x, A, B (and m, the bias if it trains)."""
    torch.manual_seed(0)
    linear = nn.Linear(96, 80)  # 7680 weights: 120 blocks of 64
    q = quant.QuantizedLinear(linear, "nf4", double_quant=double_quant)
    reference = nn.Linear(96, 80)
    with torch.no_grad():
        reference.weight.copy_(q.weight)
        reference.bias.copy_(linear.bias)
    reference.requires_grad_(False)  # W and b frozen, as in the 4-bit base
    layers = [LoRALinear(base, r=4, alpha=8, variant=variant) for base in (q, reference)]
    with torch.no_grad():
        B = torch.randn_like(layers[0].lora_B) * 0.05
        for layer in layers:
            layer.lora_B.copy_(B)
            layer.lora_A.copy_(layers[0].lora_A)
            if variant == "dora":
                layer.variant.magnitude.copy_(layers[0].variant.magnitude)
    x = torch.randn(3, 5, 96)
    grads = []
    for layer in layers:
        xi = x.clone().requires_grad_(True)
        out = layer(xi)
        out.pow(2).sum().backward()
        trained = {n: p.grad for n, p in layer.named_parameters() if p.requires_grad}
        grads.append((out, xi.grad, trained))
    (out, gx, trained), (out_ref, gx_ref, trained_ref) = grads
    torch.testing.assert_close(out, out_ref)
    torch.testing.assert_close(gx, gx_ref)
    assert trained.keys() == trained_ref.keys() and "lora_A" in trained
    for name, grad in trained.items():
        torch.testing.assert_close(grad, trained_ref[name], msg=name)


def test_a_bias_that_trains_gets_its_gradient_through_the_4bit_matmul():
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    q = quant.QuantizedLinear(linear, "nf4")
    q.bias.requires_grad_(True)
    x = torch.randn(4, 7, 64)
    q(x).pow(2).sum().backward()
    expected = 2 * (x @ q.weight.T + linear.bias.detach()).sum(dim=(0, 1))
    torch.testing.assert_close(q.bias.grad, expected)

"""4-bit weights (lora_edu.quant) checked against bitsandbytes, and QLoRA through apply_lora."""

import copy

import pytest
import torch
from torch import nn

from lora_edu import quant
from lora_edu.lora import (
    LoRAConfig,
    LoRALinear,
    apply_lora,
    count_parameters,
    mark_only_lora_trainable,
    merge_lora,
)
from lora_edu.models import load_text_model

bnb = pytest.importorskip("bitsandbytes.functional")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # bitsandbytes' kernel notices

SHAPES = [(384, 384), (37, 33), (1536, 384)]  # square, odd-sized (a short last block), wide


@pytest.fixture(scope="module")
def minilm() -> nn.Module:
    return load_text_model("sequence", 2)[1].eval()


def test_the_code_tables_equal_bitsandbytes():
    # NF4: quantiles of N(0, 1), computed here; equal to bitsandbytes' table bit for bit
    assert torch.equal(quant.nf4_levels(), bnb.get_4bit_type("nf4", device="cpu"))
    assert torch.equal(quant.fp4_levels(), bnb.get_4bit_type("fp4", device="cpu"))
    assert torch.equal(quant.dynamic_levels(), bnb.create_dynamic_map())
    levels = quant.nf4_levels()
    assert levels[0] == -1 and levels[-1] == 1 and (levels == 0).sum() == 1
    assert (levels > 0).sum() == 8 and (levels < 0).sum() == 7  # the asymmetric type
    # equal probability mass between neighbouring positive levels' quantile probabilities
    assert len(set(quant.int4_levels().abs().tolist())) == 8


@pytest.mark.parametrize("kind", ["nf4", "fp4"])
@pytest.mark.parametrize("shape", SHAPES)
def test_codes_and_dequantised_weights_equal_bitsandbytes(kind, shape):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 0.05
    packed, state = bnb.quantize_4bit(w, blocksize=64, quant_type=kind)
    ours = quant.quantize_4bit(w, kind, 64)
    assert torch.equal(ours.packed, packed.reshape(-1))
    assert torch.equal(ours.absmax, state.absmax)
    assert torch.equal(quant.dequantize_4bit(ours), bnb.dequantize_4bit(packed, state))


def test_nf4_on_real_minilm_weights_equals_bitsandbytes(minilm):
    for name, module in list(minilm.named_modules())[:40]:
        if isinstance(module, nn.Linear):
            w = module.weight.detach()
            packed, state = bnb.quantize_4bit(w, blocksize=64, quant_type="nf4")
            ours = quant.dequantize_nf4(quant.quantize_nf4(w))
            assert torch.equal(ours, bnb.dequantize_4bit(packed, state)), name


def test_double_quantisation_equals_bitsandbytes_up_to_its_cpu_rounding():
    """The 4-bit codes are bitsandbytes' exactly. The 8-bit block scales are rounded to the
    nearest level here; bitsandbytes' CPU kernel (an approximate binary search) takes the
    other neighbour for a few scales that lie within 2e-5 of a midpoint between two levels (on
    the [-1, 1] scale). Everywhere else the weights are identical."""
    w = torch.randn(1536, 384, generator=torch.Generator().manual_seed(0)) * 0.05
    packed, state = bnb.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    ours = quant.quantize_4bit(w, "nf4", 64, double_quant=True)
    assert torch.equal(ours.packed, packed.reshape(-1))
    assert torch.equal(ours.scale_absmax, state.state2.absmax)
    assert ours.scale_offset == pytest.approx(state.offset.item(), rel=1e-7)
    differ = ours.scale_codes != state.absmax
    assert differ.float().mean() < 0.01
    assert ((ours.scale_codes.int() - state.absmax.int())[differ].abs() == 1).all()
    levels = quant.dynamic_levels()
    scales = quant.quantize_4bit(w, "nf4", 64).absmax - ours.scale_offset
    scaled = scales.view(-1, 256) / ours.scale_absmax[:, None]
    lo, hi = levels[ours.scale_codes.long()], levels[state.absmax.long()]
    to_midpoint = (scaled.reshape(-1)[differ] - (lo + hi)[differ] / 2).abs()
    assert differ.any() and (to_midpoint < 2e-5).all()
    # where the scales agree, the dequantised weights are identical
    theirs = bnb.dequantize_4bit(packed, state).view(-1, 64)
    agree = ~differ
    assert torch.equal(quant.dequantize_4bit(ours).view(-1, 64)[agree], theirs[agree])


def test_nf4_has_the_smallest_error_on_normal_weights_and_memory_is_as_computed():
    w = torch.randn(1536, 384, generator=torch.Generator().manual_seed(1)) * 0.05
    errors = {
        k: (quant.dequantize_4bit(quant.quantize_4bit(w, k)) - w).pow(2).mean() for k in quant.KINDS
    }
    assert errors["nf4"] < errors["int4"] and errors["nf4"] < errors["fp4"]
    plain, dq = quant.quantize_nf4(w), quant.quantize_nf4(w, double_quant=True)
    n = w.numel()
    assert plain.nbytes() == n // 2 + 4 * (n // 64)  # 4 bits + a float32 per 64: 4.5 bits
    assert dq.nbytes() == n // 2 + n // 64 + 4 * (n // 64 // 256) + 4  # ≈ 4.127 bits
    assert 8 * dq.nbytes() / n == pytest.approx(4.127, abs=0.001)


def test_quantised_linear_forward_merge_and_device_moves():
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    q = quant.QuantizedLinear(linear, "nf4", double_quant=False)
    x = torch.randn(5, 64)
    w4 = quant.dequantize_nf4(quant.quantize_nf4(linear.weight.detach()))
    torch.testing.assert_close(q(x), x @ w4.T + linear.bias)
    assert not list(p for p in q.parameters() if p.requires_grad)
    layer = LoRALinear(q, r=4, alpha=8)
    with torch.no_grad():
        layer.lora_B.normal_(std=0.05)
        before = layer(x)
        merged_w = quant.dequantize_nf4(quant.quantize_nf4(w4 + layer.delta_weight()))
        layer.merge()  # W + ΔW rounded to 4 bits again: close to the unmerged output, not equal
        after = layer(x)
    torch.testing.assert_close(after, x @ merged_w.T + linear.bias)
    assert 0 < (after - before).abs().max() < 0.1 * before.abs().max()
    with pytest.raises(ValueError, match="PiSSA on a quantised base"):
        LoRALinear(quant.QuantizedLinear(linear), r=4, alpha=8, init="pissa")
    moved = copy.deepcopy(q).to(torch.float16)  # a dtype cast leaves codes and scales alone
    assert moved.quantized.packed.dtype == torch.uint8
    assert torch.equal(moved.quantized.absmax, q.quantized.absmax)  # not rounded through fp16


def test_apply_lora_with_quantize_gives_qlora(minilm):
    model = copy.deepcopy(minilm)
    names = apply_lora(model, LoRAConfig(["query", "value"], r=4, quantize="nf4"))
    mark_only_lora_trainable(model)
    assert model.lora_config.quantize == "nf4" and model.lora_config.record()["quantize"] == "nf4"
    quantised = [n for n, m in model.named_modules() if isinstance(m, quant.QuantizedLinear)]
    assert all(f"{n}.base_layer" in quantised for n in names)  # the adapted layers' bases
    assert any("intermediate" in n for n in quantised)  # and every other linear layer
    linear_w = sum(
        m.weight.numel()
        for n, m in minilm.named_modules()
        if isinstance(m, nn.Linear) and n != "classifier"
    )
    packed = sum(
        m.quantized.nbytes() for m in model.modules() if isinstance(m, quant.QuantizedLinear)
    )
    lora = sum(4 * p.numel() for n, p in model.named_parameters() if "lora_" in n)
    # fp32 linear weights (4 bytes each) became 4-bit codes with 8-bit scales (≈ 4.127 bits)
    assert quant.weight_bytes(model) == quant.weight_bytes(minilm) - 4 * linear_w + packed + lora
    assert 8 * packed / linear_w == pytest.approx(4.127, abs=0.002)
    # the 4-bit weights still count as the model's parameters, as in the full-precision model
    plain = copy.deepcopy(minilm)
    apply_lora(plain, LoRAConfig(["query", "value"], r=4))
    assert count_parameters(model)["total"] == count_parameters(plain)["total"]
    ids = torch.randint(0, 1000, (2, 9))
    model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="quantize must be None"):
        LoRAConfig(["query"], quantize="nf3")
    merge_lora(model)  # merges into the 4-bit base, rounding again

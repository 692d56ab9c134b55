"""4-bit weights (lora_edu.quant) checked against bitsandbytes, and QLoRA through apply_lora."""

import copy
import math

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
    unmerge_lora,
)
from lora_edu.models import load_text_model

try:  # the tests that compare with bitsandbytes skip without it; the others run
    import bitsandbytes.functional as bnb
except Exception as err:  # not installed, or no backend it can load here
    bnb, BNB_MISSING = None, f"bitsandbytes is not usable here ({type(err).__name__}: {err})"
else:
    BNB_MISSING = ""
needs_bnb = pytest.mark.skipif(bnb is None, reason=BNB_MISSING)
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # bitsandbytes' kernel notices

SHAPES = [(384, 384), (37, 33), (1536, 384)]  # square, odd-sized (a short last block), wide


@pytest.fixture(scope="module")
def minilm() -> nn.Module:
    return load_text_model("sequence", 2)[1].eval()


@needs_bnb
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


@needs_bnb
@pytest.mark.parametrize("kind", ["nf4", "fp4"])
@pytest.mark.parametrize("shape", SHAPES)
def test_codes_and_dequantised_weights_equal_bitsandbytes(kind, shape):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 0.05
    packed, state = bnb.quantize_4bit(w, blocksize=64, quant_type=kind)
    ours = quant.quantize_4bit(w, kind, 64)
    assert torch.equal(ours.packed, packed.reshape(-1))
    assert torch.equal(ours.absmax, state.absmax)
    assert torch.equal(quant.dequantize_4bit(ours), bnb.dequantize_4bit(packed, state))


@needs_bnb
def test_nf4_on_real_minilm_weights_equals_bitsandbytes(minilm):
    for name, module in list(minilm.named_modules())[:40]:
        if isinstance(module, nn.Linear):
            w = module.weight.detach()
            packed, state = bnb.quantize_4bit(w, blocksize=64, quant_type="nf4")
            ours = quant.dequantize_nf4(quant.quantize_nf4(w))
            assert torch.equal(ours, bnb.dequantize_4bit(packed, state)), name


@needs_bnb
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
    # The offset is the mean of 9,216 float32 block scales: summed pairwise, its rounding
    # error is at most about log2(n) · eps relative (rel=1e-7 was below one float32 ulp, which
    # is up to 1.19e-7 relative, so any other summation order could have failed it).
    n_blocks = ours.scale_codes.numel()
    rel = math.log2(n_blocks) * torch.finfo(torch.float32).eps
    assert ours.scale_offset == pytest.approx(state.offset.item(), rel=rel)
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


def ties_at_midpoints(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Two blocks of 64 whose values after absmax scaling are exactly the midpoints between
    neighbouring levels of ``kind`` (the decision boundaries), and the lower level of each.

    Block 1 has absmax 1 (it holds 1.0), block 2 absmax 2 (everything doubled: scaling by
    1/2 is exact in binary), so the scaled values are the midpoints bit for bit. The rest of
    each block is 0."""
    ascending = quant.LEVELS[kind]().sort().values
    midpoints = (ascending[:-1] + ascending[1:]) / 2  # in float32, as the quantiser forms them
    block = torch.zeros(64)
    block[0] = 1.0
    block[1 : 1 + midpoints.numel()] = midpoints
    return torch.cat([block, 2 * block]), ascending[:-1]


@pytest.mark.parametrize("kind", ["nf4", "fp4", "int4"])
def test_a_value_exactly_between_two_levels_goes_to_the_lower(kind):
    """The documented tie rule of ``quantize_blockwise`` (bitsandbytes': ``torch.bucketize``
    with ``right=False``): a midpoint goes to the lower of its two levels."""
    weights, lower = ties_at_midpoints(kind)
    q = quant.quantize_4bit(weights, kind, 64)
    codes = torch.stack([q.packed >> 4, q.packed & 0xF], dim=1).reshape(-1).long()
    levels = quant.LEVELS[kind]()
    n = lower.numel()
    for start in (0, 64):
        assert levels[codes[start]] == 1.0  # the absmax itself
        got = levels[codes[start + 1 : start + 1 + n]]
        assert torch.equal(got, lower), f"{kind}: midpoints went to {got.tolist()}"
    assert torch.equal(q.absmax, torch.tensor([1.0, 2.0]))


@needs_bnb
@pytest.mark.parametrize("kind", ["nf4", "fp4"])
def test_ties_at_midpoints_equal_bitsandbytes(kind):
    weights, _ = ties_at_midpoints(kind)
    try:
        packed, state = bnb.quantize_4bit(weights, blocksize=64, quant_type=kind)
    except (RuntimeError, NotImplementedError) as err:
        pytest.skip(f"bitsandbytes' CPU quantize_4bit is not usable here: {err}")
    ours = quant.quantize_4bit(weights, kind, 64)
    assert torch.equal(ours.packed, packed.reshape(-1))
    assert torch.equal(quant.dequantize_4bit(ours), bnb.dequantize_4bit(packed, state).view(-1))


@pytest.mark.parametrize("double_quant", [False, True])
def test_quantising_refuses_non_finite_weights(double_quant):
    w = torch.randn(48, 64, generator=torch.Generator().manual_seed(0)) * 0.05
    w[3, 5] = float("inf")  # one value: with double quantisation it made every weight NaN
    with pytest.raises(
        ValueError,
        match=r"cannot quantise a tensor \(weight of shape \(48, 64\)\): "
        r"1 of 3072 values are non-finite \(0 NaN, 1 Inf; the first at index \(3, 5\)",
    ):
        quant.quantize_4bit(w, "nf4", 64, double_quant=double_quant)
    with pytest.raises(ValueError, match=r"weight of shape \(48, 64\)"):
        quant.QuantizedLinear(nn.Linear(64, 48).requires_grad_(False).float(), "nf4").set_weight(w)


def test_quantize_model_names_the_layer_with_non_finite_weights_and_replaces_nothing():
    from collections import OrderedDict

    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(first=nn.Linear(64, 32), second=nn.Linear(32, 16)))
    with torch.no_grad():
        model.second.weight[0, :3] = float("nan")
        model.second.weight[1, 0] = -float("inf")
    with pytest.raises(
        ValueError,
        match=r"layer 'second' \(weight of shape \(16, 32\)\): 4 of "
        r"512 values are non-finite \(3 NaN, 1 Inf; the first at index \(0, 0\)",
    ):
        quant.quantize_model(model)
    assert type(model.first) is nn.Linear and type(model.second) is nn.Linear  # all or nothing
    with torch.no_grad():
        model.second.weight.normal_(std=0.05)
    quant.quantize_model(model)
    before = model.second.weight
    # A weight written later (a merge into the 4-bit base) is checked too, under the name.
    with pytest.raises(ValueError, match="cannot quantise layer 'second'.*512 of 512"):
        model.second.weight = torch.full((16, 32), float("nan"))
    assert torch.equal(model.second.weight, before)


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


def _codes_and_scales(q: quant.Quantized4bit) -> dict:
    """Every stored part of a 4-bit tensor, cloned (a later rewrite cannot change these)."""
    parts = ("packed", "absmax", "scale_codes", "scale_absmax")
    return {
        "scale_offset": q.scale_offset,
        **{p: None if getattr(q, p) is None else getattr(q, p).clone() for p in parts},
    }


@pytest.mark.parametrize("variant", [None, "dora"])
@pytest.mark.parametrize("double_quant", [False, True])
def test_merge_then_unmerge_restores_the_4bit_base_bit_for_bit(variant, double_quant):
    """Merging rounds W + ΔW to 4 bits; unmerging used to subtract ΔW and round again, which
    moved the frozen base for good (|W − W₀| / |W₀| ≈ 0.02 a cycle). Now it puts the original
    codes and scales back: the base is bit for bit what it was, cycle after cycle."""
    torch.manual_seed(0)
    q = quant.QuantizedLinear(nn.Linear(128, 96), "nf4", double_quant=double_quant)
    layer = LoRALinear(q, r=4, alpha=8, variant=variant)
    with torch.no_grad():
        layer.lora_B.normal_(std=0.05)
        if variant == "dora":
            layer.variant.magnitude.mul_(1.1)
    original, w0 = _codes_and_scales(q.quantized), q.weight
    x = torch.randn(6, 128)
    with torch.no_grad():
        unmerged = layer(x)
        for _ in range(3):
            layer.merge()
            assert not torch.equal(q.weight, w0)  # W + ΔW (rescaled by DoRA), in 4 bits
            merged = layer(x)
            assert 0 < (merged - unmerged).abs().max() < 0.1 * unmerged.abs().max()
            layer.unmerge()
            restored = _codes_and_scales(q.quantized)
            for part, value in original.items():
                same = (
                    value == restored[part]
                    if not torch.is_tensor(value)
                    else (torch.equal(value, restored[part]))
                )
                assert same, f"{part} changed by merge → unmerge"
            assert torch.equal(q.weight, w0)
            torch.testing.assert_close(layer(x), unmerged, rtol=0, atol=0)


def test_merge_lora_and_unmerge_lora_leave_a_qlora_model_s_base_as_it_was():
    from collections import OrderedDict

    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(up=nn.Linear(64, 64), act=nn.ReLU(), down=nn.Linear(64, 32)))
    apply_lora(model, LoRAConfig(["up", "down"], r=4, quantize="nf4"))
    for name in ("up", "down"):
        with torch.no_grad():
            model.get_submodule(name).lora_B.normal_(std=0.05)
    bases = {n: m for n, m in model.named_modules() if isinstance(m, quant.QuantizedLinear)}
    before = {n: _codes_and_scales(m.quantized) for n, m in bases.items()}
    merge_lora(model)
    unmerge_lora(model)
    for name, module in bases.items():
        after = _codes_and_scales(module.quantized)
        assert torch.equal(after["packed"], before[name]["packed"]), name
        assert torch.equal(after["scale_codes"], before[name]["scale_codes"]), name
        assert after["scale_offset"] == before[name]["scale_offset"], name

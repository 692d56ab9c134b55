"""Half precision (bfloat16, float16) against PEFT: every variant's forward, adapters kept in
float32 on a bfloat16 base (PEFT's default), VeRA's shared pair through ``model.to`` and loading,
and DoRA answering in the base model's dtype inside attention."""

import copy

import pytest
import torch
from torch import nn

from lora_edu.lora import (
    LoRAConfig,
    LoRALinear,
    adapter_state_dict,
    apply_lora,
    load_adapter,
    mark_only_lora_trainable,
    save_adapter,
)
from lora_edu.variants.vera import VeRA, kaiming_uniform

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

HALF = (torch.bfloat16, torch.float16)
TARGETS = ["narrow", "wide"]


class SideBySide(nn.Module):
    """Two adapted layers side by side, 24 → 32 and 32 → 37 (VeRA slices its shared pair for
    both): every output element passes through exactly one adapted layer, so the rounding count
    in ``tolerance`` holds for each of them."""

    def __init__(self) -> None:
        super().__init__()
        self.narrow = nn.Linear(24, 32)
        self.wide = nn.Linear(32, 37)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (..., 32) → (..., 69)
        return torch.cat([self.narrow(x[..., :24]), self.wide(x)], dim=-1)


def side_by_side(dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    return SideBySide().to(dtype)


#: variant → (our settings, the same adapter as a PEFT config)
VARIANTS = {
    "lora": (
        dict(r=4, alpha=8),
        lambda: peft.LoraConfig(target_modules=TARGETS, r=4, lora_alpha=8),
    ),
    "rslora": (
        dict(r=4, alpha=8, use_rslora=True),
        lambda: peft.LoraConfig(target_modules=TARGETS, r=4, lora_alpha=8, use_rslora=True),
    ),
    "dora": (
        dict(r=4, alpha=8, variant="dora"),
        lambda: peft.LoraConfig(target_modules=TARGETS, r=4, lora_alpha=8, use_dora=True),
    ),
    "vera": (dict(r=6, variant="vera"), lambda: peft.VeraConfig(target_modules=TARGETS, r=6)),
    "adalora": (
        dict(r=6, alpha=8, variant="adalora"),
        lambda: peft.AdaLoraConfig(
            target_modules=TARGETS, init_r=6, target_r=3, lora_alpha=8, total_step=10
        ),
    ),
    # LoRA-FA and LoRA+ change what trains and how fast; their model and file are plain LoRA's.
    "lora-fa": (
        dict(r=4, alpha=8, variant="lora-fa"),
        lambda: peft.LoraConfig(target_modules=TARGETS, r=4, lora_alpha=8),
    ),
    "lora-plus": (
        dict(r=4, alpha=8, variant="lora-plus"),
        lambda: peft.LoraConfig(target_modules=TARGETS, r=4, lora_alpha=8),
    ),
}


def tolerance(dtype: torch.dtype, scale: float, roundings: int = 6) -> float:
    """How far apart two correct forwards in ``dtype`` may be, per output element.

    Both sides compute the same function of exactly the same weights, and each rounds its
    intermediate results to ``dtype``: unit roundoff u = eps / 2, with eps = 2⁻⁷ for bfloat16
    and 2⁻¹⁰ for float16 (half-precision matmuls accumulate in float32 and round once). Both call
    the same base layer on the same input, so W x + b is identical. On its way to one output
    element an adapted layer rounds at most ``roundings`` times (LoRA: A x, B(A x), × scaling,
    + y; DoRA adds ‖W + s·B A‖, m / ‖·‖ and the rescaled base), each error at most u times a value
    of the order of ``scale`` = max |output| (the adapters below are drawn so that update and
    output are of one size). So each side is within roundings · u · scale of the exact result,
    and the two within 2 · roundings · u · scale = roundings · eps · scale of each other
    (measured: under 1 eps · scale for every variant and both dtypes).
    """
    return roundings * torch.finfo(dtype).eps * scale


def randomise(model: nn.Module, seed: int) -> None:
    """Non-zero adapter weights of the size of the base output: A, B (and AdaLoRA's Λ, VeRA's
    λ) drawn at random, DoRA's magnitudes moved away from ‖W + ΔW‖; VeRA's shared pair kept."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, tensor in adapter_state_dict(model).items():
            if key.endswith(("vera_A", "vera_B")):
                continue
            if "magnitude" in key:
                tensor.mul_(torch.empty(tensor.shape).uniform_(0.5, 1.5, generator=generator))
            else:
                std = 1.0 if "lambda" in key or "lora_E" in key else 0.3
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * std)


def keep_adapter_in_float32(model: nn.Module) -> None:
    """PEFT's default on a half-precision base (``autocast_adapter_dtype=True``): every adapter
    parameter in float32, the base layers untouched. VeRA's A and B are views of the shared pair,
    which PEFT keeps as buffers: they stay as they are."""
    for layer in (m for m in model.modules() if isinstance(m, LoRALinear)):
        params = [] if isinstance(layer.variant, VeRA) else [layer.lora_A, layer.lora_B]
        params += [] if layer.variant is None else list(layer.variant.parameters())
        for param in params:
            param.data = param.data.float()


def forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` without gradients; skips the test where the CPU has no float16 kernel for an
    operation (PyTorch has had them for the operations used here since 2.1)."""
    try:
        with torch.no_grad():
            return model(x)
    except RuntimeError as err:
        if x.dtype == torch.float16 and x.device.type == "cpu" and "'Half'" in str(err):
            pytest.skip(f"float16 is not supported on this CPU for an operation used: {err}")
        raise


def pair(variant: str, dtype: torch.dtype, adapter_in_float32: bool = False):
    """Our model and PEFT's on a ``dtype`` base, holding the same non-zero adapter weights: in
    ``dtype`` too (``autocast_adapter_dtype=False`` for PEFT), or in float32 (both sides)."""
    ours_settings, peft_config = VARIANTS[variant]
    ours = side_by_side(dtype)
    apply_lora(ours, LoRAConfig(TARGETS, **ours_settings))
    mark_only_lora_trainable(ours)
    randomise(ours, 2)
    if adapter_in_float32:
        keep_adapter_in_float32(ours)
    theirs = peft.get_peft_model(
        side_by_side(dtype), peft_config(), autocast_adapter_dtype=adapter_in_float32
    )
    state = {k: v.detach().clone() for k, v in adapter_state_dict(ours).items()}
    result = peft.set_peft_model_state_dict(theirs, state)
    assert not result.unexpected_keys
    return ours, theirs


def inputs(dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(4, 7, 32, generator=torch.Generator().manual_seed(3)).to(dtype)


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_in_half_precision_equals_peft(variant, dtype):
    ours, theirs = pair(variant, dtype)
    x = inputs(dtype)
    mine, expected, base = forward(ours, x), forward(theirs, x), forward(side_by_side(dtype), x)
    assert mine.dtype == expected.dtype == dtype
    scale = expected.abs().max().item()
    torch.testing.assert_close(mine, expected, rtol=0, atol=tolerance(dtype, scale))
    # The adapter moves the output by far more than the tolerance: a wrong update cannot pass.
    assert (expected.float() - base.float()).abs().max() > 0.3 * scale


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_kept_in_float32_on_a_bfloat16_base_equals_peft(variant):
    # Both sides compute each update in float32 (their float32 work differs at most in the order
    # of operations, ~1e-7 relative) and round to bfloat16: PEFT the sum y + update, once; DoRA,
    # VeRA and AdaLoRA here likewise; plain LoRA (and LoRA-FA, LoRA+) rounds the update before
    # adding it (test_lora_layer pins that), one rounding more. Each rounding moves a value by at
    # most half an ulp, eps / 2 relative: two on our side, one on PEFT's, under 2 eps · scale.
    ours, theirs = pair(variant, torch.bfloat16, adapter_in_float32=True)
    x = inputs(torch.bfloat16)
    mine, expected = forward(ours, x), forward(theirs, x)
    assert mine.dtype == expected.dtype == torch.bfloat16
    scale = expected.abs().max().item()
    torch.testing.assert_close(mine, expected, rtol=0, atol=tolerance(torch.bfloat16, scale, 2))


# ------------------------------------------------------------------------------------- VeRA


def vera_layers(model: nn.Module) -> list[LoRALinear]:
    layers = [m for m in model.modules() if isinstance(m, LoRALinear)]
    assert layers and all(isinstance(m.variant, VeRA) for m in layers)
    return layers


def peft_vera_folder(folder, dtype: torch.dtype) -> nn.Module:
    """A VeRA adapter made by PEFT on a ``dtype`` base and saved in ``folder``, with random λ
    and a shared pair of its own (``projection_prng_key=7``, not the default draw), so a layer
    that kept its own pair instead of the file's would show."""
    config = peft.VeraConfig(target_modules=TARGETS, r=6, projection_prng_key=7)
    theirs = peft.get_peft_model(side_by_side(dtype), config)
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, param in theirs.named_parameters():
            if "vera_lambda" in name:
                param.copy_(torch.randn(param.shape, generator=generator))
    theirs.save_pretrained(folder)
    return theirs.eval()


def assert_one_shared_pair(model: nn.Module, dtype: torch.dtype) -> None:
    """Every VeRA layer reads one A and one B: the same tensor object in every layer, and each
    layer's ``lora_A``/``lora_B`` a view of its storage."""
    layers = vera_layers(model)
    A, B = layers[0].variant.vera_A, layers[0].variant.vera_B
    assert A.dtype == B.dtype == dtype
    for layer in layers:
        assert layer.variant.vera_A is A and layer.variant.vera_B is B
        assert layer.lora_A.data_ptr() == A.data_ptr() and layer.lora_B.data_ptr() == B.data_ptr()
        assert layer.lora_A.dtype == layer.lora_B.dtype == dtype
    assert layers[0].lora_A.shape != layers[1].lora_A.shape  # two slices of the one pair


def test_a_bfloat16_vera_adapter_made_by_peft_loads_into_every_layer(tmp_path):
    theirs = peft_vera_folder(tmp_path, torch.bfloat16)
    pair_in_file = theirs.base_model.vera_A["default"]
    own_draw = kaiming_uniform(tuple(pair_in_file.shape), torch.Generator().manual_seed(0))
    assert not torch.allclose(pair_in_file.float(), own_draw)  # the file's pair is another one
    ours = side_by_side(torch.bfloat16)
    load_adapter(ours, tmp_path)
    assert_one_shared_pair(ours, torch.bfloat16)
    for layer in vera_layers(ours):  # every layer reads the file's pair, rounded to bfloat16
        expected = pair_in_file[:, : layer.in_features].to(torch.bfloat16)
        torch.testing.assert_close(layer.lora_A, expected, rtol=0, atol=0)
    x = inputs(torch.bfloat16)
    mine, expected = forward(ours, x), forward(theirs, x)
    # PEFT keeps the adapter in float32 on a bfloat16 base (so the file holds float32); loading
    # rounds λ_b, λ_d, A and B to bfloat16 once more each: 4 roundings beyond the 6 of
    # `tolerance`, each of relative size u on a factor of the update.
    scale = expected.abs().max().item()
    torch.testing.assert_close(mine, expected, rtol=0, atol=tolerance(torch.bfloat16, scale, 10))
    base = forward(side_by_side(torch.bfloat16), x)
    assert (expected.float() - base.float()).abs().max() > 0.3 * scale


def test_vera_layers_keep_one_pair_through_model_to_and_loading(tmp_path):
    model = side_by_side(torch.float32)
    apply_lora(model, LoRAConfig(TARGETS, r=6, variant="vera"))
    model.to(torch.bfloat16)  # a conversion copies each tensor on its own: views must be re-tied
    assert_one_shared_pair(model, torch.bfloat16)
    model.half()
    assert_one_shared_pair(model, torch.float16)
    # Loaded in float32, then converted: every layer reads the file's pair afterwards.
    theirs = peft_vera_folder(tmp_path, torch.float32)
    ours = side_by_side(torch.float32)
    load_adapter(ours, tmp_path)
    ours.to(torch.bfloat16)
    assert_one_shared_pair(ours, torch.bfloat16)
    pair_in_file = theirs.base_model.vera_B["default"]
    for layer in vera_layers(ours):
        expected = pair_in_file[: layer.out_features].to(torch.bfloat16)
        torch.testing.assert_close(layer.variant.vera_B[: layer.out_features], expected)
        torch.testing.assert_close(layer.lora_B, expected)
    # Saved from bfloat16: the pair once, under PEFT's keys, and PEFT reads it back.
    save_adapter(ours, tmp_path / "again")
    loaded = peft.PeftModel.from_pretrained(side_by_side(torch.bfloat16), tmp_path / "again")
    saved = loaded.base_model.vera_A["default"]
    torch.testing.assert_close(saved.bfloat16(), vera_layers(ours)[0].variant.vera_A)


# ------------------------------------------------------------------------------------- DoRA

BERT = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
    vocab_size=100, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    initializer_range=0.2,  # large enough weights that the adapted layers shape the logits
)  # fmt: skip
BERT_TARGETS = ["query", "value", "intermediate.dense"]


def tiny_bert(dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(**BERT)
    return transformers.BertForSequenceClassification(config).eval().to(dtype)


def test_dora_in_float32_on_a_bfloat16_bert_answers_in_bfloat16_as_peft():
    bf16 = torch.bfloat16
    ours = tiny_bert(bf16)
    apply_lora(ours, LoRAConfig(BERT_TARGETS, r=4, alpha=8, variant="dora"))
    mark_only_lora_trainable(ours)
    randomise(ours, 5)
    keep_adapter_in_float32(ours)  # a float32 query would meet a bfloat16 key in attention
    layer = ours.get_submodule("bert.encoder.layer.0.attention.self.query")
    assert layer.lora_A.dtype == layer.variant.magnitude.dtype == torch.float32
    x = torch.randn(3, 7, 32).to(bf16)
    assert layer(x).dtype == bf16  # the base layer's dtype, as PEFT casts back
    config = peft.LoraConfig(target_modules=BERT_TARGETS, r=4, lora_alpha=8, use_dora=True)
    theirs = peft.get_peft_model(tiny_bert(bf16), config)  # float32 adapter: PEFT's default
    peft.set_peft_model_state_dict(
        theirs, {k: v.clone() for k, v in adapter_state_dict(ours).items()}
    )
    ids = torch.randint(0, 100, (3, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        mine, expected = ours(input_ids=ids).logits, theirs(input_ids=ids).logits
        base = tiny_bert(bf16)(input_ids=ids).logits
    assert mine.dtype == expected.dtype == bf16
    # Both compute each DoRA layer in float32 and round its output to bfloat16 once: equal, or
    # one ulp (eps relative) apart where float32 results straddle a rounding boundary. The rest
    # is the same bfloat16 network, whose layer norms keep that one ulp at the scale of the
    # logits: within 2 eps · scale (a factor 2 for the two adapted sublayers per block).
    scale = expected.abs().max().item()
    atol = 2 * torch.finfo(bf16).eps * scale
    torch.testing.assert_close(mine, expected, rtol=0, atol=atol)
    assert (expected.float() - base.float()).abs().max() > 0.3 * scale  # DoRA matters here
    copy.deepcopy(ours).float()(input_ids=ids)  # and the whole model converts back cleanly

"""LoRALinear on its own: forward, inits (PEFT's formulas), merge/unmerge, dtypes, devices, and
agreement with the numpy reference (lora_edu.numpy_lora)."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from lora_edu.lora import LoRALinear, lora_scaling, pissa_init
from lora_edu.numpy_lora import lora_backward, lora_forward

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def make_layer(d_in=6, d_out=5, r=3, alpha=6.0, dtype=torch.float32, random_B=True, **kwargs):
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(d_in, d_out, dtype=dtype), r, alpha, **kwargs)
    if random_B:
        with torch.no_grad():
            layer.lora_B.normal_()
    return layer


def reference(layer: LoRALinear, x: torch.Tensor) -> torch.Tensor:
    """y = x Wᵀ + b + scaling · x (B A)ᵀ, with B A formed explicitly (the layer never forms it)."""
    W, b = layer.base_layer.weight, layer.base_layer.bias
    return x @ W.T + b + layer.scaling * x @ (layer.lora_B @ layer.lora_A).T


@pytest.mark.parametrize("lead", [(), (4,), (2, 3), (2, 3, 4)])
def test_forward_matches_formula_for_any_leading_dims(lead):
    layer = make_layer()
    x = torch.randn(*lead, 6)
    y = layer(x)
    assert y.shape == (*lead, 5)
    torch.testing.assert_close(y, reference(layer, x), atol=1e-5, rtol=1e-5)


def test_scaling_and_rslora():
    assert make_layer(r=4, alpha=8).scaling == 2.0
    assert make_layer(r=4, alpha=8, use_rslora=True).scaling == 4.0
    assert lora_scaling(16, 32, use_rslora=True) == 32 / math.sqrt(16)


def test_parameter_shapes_and_state_dict_keys():
    layer = make_layer(d_in=6, d_out=5, r=3)
    assert layer.lora_A.shape == (3, 6) and layer.lora_B.shape == (5, 3)
    assert set(layer.state_dict()) == {"base_layer.weight", "base_layer.bias", "lora_A", "lora_B"}
    assert isinstance(make_layer().lora_dropout, nn.Identity)
    assert isinstance(make_layer(dropout=0.1).lora_dropout, nn.Dropout)


@pytest.mark.parametrize("init", ["kaiming", "gaussian", "pissa"])
def test_every_init_leaves_the_output_unchanged_at_step_0(init):
    torch.manual_seed(1)
    base = nn.Linear(8, 7)
    x = torch.randn(10, 8)
    before = base(x)
    layer = LoRALinear(base, r=3, alpha=5, init=init)
    torch.testing.assert_close(layer(x), before, atol=1e-5, rtol=1e-5)
    if init != "pissa":
        assert torch.count_nonzero(layer.lora_B) == 0
        assert torch.count_nonzero(layer.lora_A) == layer.lora_A.numel()


def test_kaiming_init_is_nn_linears_and_gaussian_has_std_one_over_r():
    torch.manual_seed(0)
    d_in, r = 4096, 4
    kaiming = LoRALinear(nn.Linear(d_in, 2), r, alpha=8, init="kaiming").lora_A
    # kaiming_uniform_(a=√5) is uniform on ±1/√fan_in: the spread nn.Linear gives its weights.
    bound = 1 / math.sqrt(d_in)
    assert kaiming.abs().max() <= bound and kaiming.abs().max() > 0.99 * bound
    gaussian = LoRALinear(nn.Linear(d_in, 2), r, alpha=8, init="gaussian").lora_A
    assert abs(gaussian.std().item() - 1 / r) < 0.02 / r  # 16384 samples: ~0.6% standard error


def test_pissa_is_the_principal_part_and_the_residual():
    torch.manual_seed(0)
    W = torch.randn(7, 9)
    r, scaling = 3, 2.5
    A, B, residual = pissa_init(W, r, scaling)
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    principal = U[:, :r] @ torch.diag(S[:r]) @ Vh[:r]
    torch.testing.assert_close(scaling * B @ A, principal, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(residual + scaling * B @ A, W, atol=1e-5, rtol=1e-5)
    # A and B share the singular values equally: A Aᵀ = B ᵀB = diag(S_r) / scaling.
    torch.testing.assert_close(A @ A.T, torch.diag(S[:r]) / scaling, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(B.T @ B, torch.diag(S[:r]) / scaling, atol=1e-4, rtol=1e-5)


def test_pissa_matches_peft():
    peft = pytest.importorskip("peft")

    def model() -> nn.Sequential:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(9, 7))

    config = peft.LoraConfig(r=3, lora_alpha=6, target_modules=["0"], init_lora_weights="pissa")
    theirs = peft.get_peft_model(model(), config).base_model.model[0]
    ours = LoRALinear(model()[0], r=3, alpha=6, init="pissa")
    torch.testing.assert_close(ours.lora_A, theirs.lora_A["default"].weight, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ours.lora_B, theirs.lora_B["default"].weight, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ours.base_layer.weight, theirs.base_layer.weight, atol=1e-6, rtol=0)


def test_delta_weight_merge_and_unmerge_round_trip():
    layer = make_layer()
    x = torch.randn(4, 6)
    W0 = layer.base_layer.weight.detach().clone()
    y = layer(x)
    delta = layer.delta_weight()
    torch.testing.assert_close(delta, layer.scaling * layer.lora_B @ layer.lora_A)
    layer.merge()
    assert layer.merged and "merged=True" in repr(layer)
    torch.testing.assert_close(layer.base_layer.weight, W0 + delta)
    torch.testing.assert_close(layer(x), y, atol=1e-5, rtol=1e-5)
    B = layer.lora_B.detach().clone()
    with torch.no_grad():
        layer.lora_B.fill_(float("nan"))  # merged: the LoRA path must not be used any more
        assert torch.isfinite(layer(x)).all()
        layer.lora_B.copy_(B)
    layer.unmerge()
    assert not layer.merged
    torch.testing.assert_close(layer.base_layer.weight, W0, atol=1e-5, rtol=1e-5)


def test_merge_twice_and_unmerge_unmerged_warn_and_do_nothing():
    layer = make_layer()
    with pytest.warns(UserWarning, match="not merged; unmerge"):
        layer.unmerge()
    layer.merge()
    W = layer.base_layer.weight.detach().clone()
    with pytest.warns(UserWarning, match="already merged; merge"):
        layer.merge()
    assert torch.equal(layer.base_layer.weight, W)


def test_merging_nan_or_inf_raises_and_keeps_W():
    for bad in (float("nan"), float("inf")):
        layer = make_layer()
        W = layer.base_layer.weight.detach().clone()
        with torch.no_grad():
            layer.lora_B[0, 0] = bad
        with pytest.raises(ValueError, match="NaN or Inf"):
            layer.merge()
        assert torch.equal(layer.base_layer.weight, W) and not layer.merged


def test_gradients_flow_to_A_and_B_and_zero_B_blocks_A():
    layer = make_layer(random_B=False)
    layer(torch.randn(4, 6)).sum().backward()
    # With B = 0, ∂L/∂A = scaling · (G B)ᵀ x = 0: only B moves in the first step.
    assert torch.count_nonzero(layer.lora_A.grad) == 0
    assert torch.count_nonzero(layer.lora_B.grad) > 0


def test_dropout_acts_on_the_lora_path_only():
    layer = make_layer(d_in=64, dropout=0.5, random_B=False)
    x = torch.randn(8, 64)
    layer.train()
    torch.testing.assert_close(layer(x), layer.base_layer(x))  # B = 0: nothing to drop
    with torch.no_grad():
        layer.lora_B.normal_()
    assert not torch.allclose(layer(x), layer(x))  # two dropout masks
    layer.eval()
    torch.testing.assert_close(layer(x), reference(layer, x), atol=1e-5, rtol=1e-5)


def test_float64_and_bfloat16_base_layers():
    layer64 = make_layer(dtype=torch.float64)
    assert layer64.lora_A.dtype == layer64.lora_B.dtype == torch.float64
    x = torch.randn(3, 6, dtype=torch.float64)
    torch.testing.assert_close(layer64(x), reference(layer64, x), atol=1e-12, rtol=1e-12)

    layer16 = make_layer(dtype=torch.bfloat16)
    assert layer16.lora_A.dtype == torch.bfloat16
    xb = torch.randn(3, 6).to(torch.bfloat16)
    y = layer16(xb)
    assert y.dtype == torch.bfloat16
    as_float = {k: v.float() for k, v in layer16.state_dict().items()}
    ref = make_layer()
    ref.load_state_dict(as_float)
    torch.testing.assert_close(y.float(), ref(xb.float()), atol=0.1, rtol=0.05)
    layer16.merge()  # ΔW computed in float32, rounded once to bfloat16
    torch.testing.assert_close(layer16(xb).float(), y.float(), atol=0.1, rtol=0.05)


def test_lora_kept_in_float32_on_a_bfloat16_base_returns_bfloat16():
    layer = make_layer(dtype=torch.bfloat16)
    layer.lora_A.data, layer.lora_B.data = layer.lora_A.data.float(), layer.lora_B.data.float()
    x = torch.randn(3, 6).to(torch.bfloat16)
    y = layer(x)
    assert y.dtype == torch.bfloat16
    # The values: the bfloat16 base output plus the float32 update x Aᵀ (s·Bᵀ), rounded once.
    base = layer.base_layer(x)
    update = (x.float() @ layer.lora_A.T) @ (layer.lora_B.T * layer.scaling)
    assert update.abs().max() > 0.1  # B is non-zero: the LoRA path really contributes
    assert torch.equal(y, base + update.to(torch.bfloat16))
    assert not torch.equal(y, base)


def test_matches_the_numpy_reference_forward_and_backward_in_float64():
    layer = make_layer(d_in=6, d_out=5, r=3, alpha=7.0, dtype=torch.float64)
    nn.init.zeros_(layer.base_layer.bias)  # lora_forward has no bias term
    x = torch.randn(2, 4, 6, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    W, A, B = (t.detach().numpy() for t in (layer.base_layer.weight, layer.lora_A, layer.lora_B))
    np.testing.assert_allclose(
        y.detach().numpy(), lora_forward(x.detach().numpy(), W, A, B, layer.scaling), atol=1e-12
    )
    grad_y = torch.randn_like(y)
    y.backward(grad_y)
    grad_x, grad_A, grad_B = lora_backward(
        x.detach().numpy(), W, A, B, layer.scaling, grad_y.numpy()
    )
    np.testing.assert_allclose(x.grad.numpy(), grad_x, atol=1e-12)
    np.testing.assert_allclose(layer.lora_A.grad.numpy(), grad_A, atol=1e-12)
    np.testing.assert_allclose(layer.lora_B.grad.numpy(), grad_B, atol=1e-12)


def test_extra_repr():
    text = repr(make_layer(r=4, alpha=8, use_rslora=True))
    assert "r=4, alpha=8, scaling=4, use_rslora=True, merged=False" in text


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"r": 0}, "r \\(the rank\\) must be a positive int, got 0"),
        ({"r": 2.5}, "positive int, got 2.5"),
        ({"alpha": -1}, "alpha must be a positive finite number, got -1"),
        ({"alpha": float("inf")}, "alpha must be a positive finite number, got inf"),
        ({"alpha": float("nan")}, "alpha must be a positive finite number, got nan"),
        ({"dropout": 1.0}, "dropout must be in \\[0, 1\\), got 1.0"),
        ({"init": "xavier"}, "init must be one of 'kaiming', 'gaussian', 'pissa', got 'xavier'"),
        ({"init": "pissa", "r": 6}, "PiSSA needs r <= min\\(d_out, d_in\\) = 5"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    args = {"r": 3, "alpha": 6} | kwargs
    with pytest.raises(ValueError, match=match):
        LoRALinear(nn.Linear(6, 5), **args)


def test_wrapping_something_else_than_linear_raises():
    with pytest.raises(TypeError, match="wraps an nn.Linear .*got a Conv1d"):
        LoRALinear(nn.Conv1d(2, 2, 1), r=1, alpha=1)


def test_parameters_follow_the_base_layers_device_on_meta():
    # The meta device stands in for any device here (no memory, no kernels needed).
    layer = LoRALinear(nn.Linear(6, 5, device="meta"), r=2, alpha=2, init="gaussian")
    assert layer.lora_A.device.type == layer.lora_B.device.type == "meta"


@pytest.mark.gpu
@gpu
def test_on_cuda_forward_merge_and_dtype():
    layer = make_layer().cuda()
    x = torch.randn(4, 6, device="cuda")
    cpu = make_layer()
    torch.testing.assert_close(layer(x).cpu(), cpu(x.cpu()), atol=1e-4, rtol=1e-4)
    fresh = LoRALinear(nn.Linear(6, 5, device="cuda", dtype=torch.bfloat16), r=2, alpha=4)
    assert fresh.lora_A.device.type == "cuda" and fresh.lora_A.dtype == torch.bfloat16
    pissa = LoRALinear(nn.Linear(6, 5, device="cuda"), r=2, alpha=4, init="pissa")
    assert pissa.base_layer.weight.device.type == "cuda"
    y = layer(x)
    layer.merge()
    torch.testing.assert_close(layer(x), y, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: lora_scaling(0, 16),
            "r \\(the rank\\) must be a positive int, got 0",
        ),
        (lambda: lora_scaling(8, float("inf")), "alpha must be a positive finite"),
        (
            lambda: pissa_init(torch.ones(4, 4), 2, 0.0),
            "scaling must be a positive finite number, got 0.0",
        ),
        (lambda: pissa_init(torch.ones(4, 4), 0, 1.0), "positive int, got 0"),
    ],
)
def test_scaling_and_pissa_refuse_bad_values_with_a_clear_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()

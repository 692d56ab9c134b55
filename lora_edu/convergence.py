"""How LoRA training moves the weights, and how to read a loss curve: small numpy tools.

The full-weight gradient ``G = ∂L/∂W`` (d_out, d_in) determines LoRA's gradients. With
``ΔW = s · B A`` (s = scaling), ``A (r, d_in)`` and ``B (d_out, r)``::

    ∂L/∂B = s · G Aᵀ        (d_out, r)
    ∂L/∂A = s · Bᵀ G        (r, d_in)

and one gradient step of size η on A and B changes ΔW, to first order in η, by::

    δΔW = −η s² (G AᵀA + B Bᵀ G)        (d_out, d_in)

G is projected onto the row space of A and the column space of B: LoRA follows the part of the
full fine-tuning gradient that its current factors can express.

Reading loss curves: :func:`steps_to_tolerance` (when did a run get close enough?),
:func:`classify_run` (converged, stalled or diverged, by a stated rule), :func:`loglog_slope`
(the exponent of a power law). :func:`first_step_decrease` predicts the first update's loss
decrease for SGD and Adam, the basis of the rsLoRA argument (Kalajdzievski 2023).

Everything here needs numpy only. (The accuracy of a trained text classifier on any split, for
the real-task generalisation gap, is ``lora_edu.train.text_classifier_accuracy``.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from lora_edu.numpy_lora import OPTIMIZERS, ToyProblem, toy_data

RUN_CLASSES = ("converged", "stalled", "diverged")

__all__ = [
    "RUN_CLASSES",
    "classify_run",
    "delta_w_first_order",
    "first_step_decrease",
    "lora_factor_grads",
    "loglog_slope",
    "steps_to_tolerance",
    "toy_weight_grad",
]


def _matrix(a: Any, name: str) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D matrix, got shape {arr.shape}")
    return arr


def _check_factors(grad_W: Any, A: Any, B: Any | None) -> tuple[np.ndarray, ...]:
    """grad_W (d_out, d_in), A (r, d_in) and, unless None, B (d_out, r), as float64."""
    G, A = _matrix(grad_W, "grad_W"), _matrix(A, "A")
    d_out, d_in = G.shape
    if A.shape[1] != d_in:
        raise ValueError(
            f"A has shape {A.shape} but grad_W has shape {G.shape}, i.e. d_in={d_in}: "
            f"A must be (r, d_in) = (r, {d_in})"
        )
    if B is None:
        return G, A
    B = _matrix(B, "B")
    if B.shape != (d_out, A.shape[0]):
        raise ValueError(
            f"B has shape {B.shape} but must be (d_out, r) = ({d_out}, {A.shape[0]}) "
            f"(d_out from grad_W {G.shape}, r from A {A.shape})"
        )
    return G, A, B


# --------------------------------------------------------------------------------------------
# Gradient geometry


def toy_weight_grad(
    problem: ToyProblem, delta_W: np.ndarray | float = 0.0, split: str = "train"
) -> np.ndarray:
    """``G = ∂L/∂W`` (d_out, d_in) of the toy loss at ``W = W0 + ΔW``: ``(X Wᵀ − Y)ᵀ X / n``.

    This is the gradient full fine-tuning follows; LoRA's gradients are ``s G Aᵀ`` and ``s Bᵀ G``.
    """
    X, Y = toy_data(problem, split)
    delta_W = np.asarray(delta_W, dtype=np.float64)
    if delta_W.ndim != 0 and delta_W.shape != problem.W0.shape:
        raise ValueError(
            f"delta_W has shape {np.shape(delta_W)} but W0 has shape {problem.W0.shape}: "
            "delta_W must be (d_out, d_in) or 0"
        )
    W = problem.W0 + delta_W
    return (X @ W.T - Y).T @ X / len(X)


def lora_factor_grads(
    grad_W: np.ndarray, A: np.ndarray, B: np.ndarray, scaling: float
) -> tuple[np.ndarray, np.ndarray]:
    """``(∂L/∂A, ∂L/∂B) = (s Bᵀ G, s G Aᵀ)`` from the full-weight gradient ``G`` (d_out, d_in).

    Shapes: A (r, d_in), B (d_out, r) → grad_A (r, d_in), grad_B (d_out, r). Chain rule through
    ``W = W0 + s B A``: ``∂W_ij/∂B_im = s A_mj`` and ``∂W_ij/∂A_mj = s B_im``.
    """
    G, A, B = _check_factors(grad_W, A, B)
    return scaling * (B.T @ G), scaling * (G @ A.T)


def delta_w_first_order(
    grad_W: np.ndarray, A: np.ndarray, B: np.ndarray, scaling: float, lr: float
) -> np.ndarray:
    """The first-order change of ``ΔW = s B A`` after one SGD step of size ``lr`` on A and B::

        δΔW = −lr · s² (G AᵀA + B Bᵀ G)        (d_out, d_in)

    The exact change adds ``lr² s³ G AᵀBᵀ G``, which is zero when B = 0 (the first step).
    """
    G, A, B = _check_factors(grad_W, A, B)
    return -lr * scaling**2 * (G @ A.T @ A + B @ B.T @ G)


def first_step_decrease(
    grad_W: np.ndarray,
    A: np.ndarray,
    scaling: float,
    lr: float,
    optimizer: str = "sgd",
    eps: float = 1e-8,
) -> float:
    """Predicted loss decrease ``L₀ − L₁`` of the first update from B = 0, to first order in lr.

    At B = 0 only B has a gradient, ``g = s G Aᵀ`` (d_out, r). The first step moves B by
    ``−lr g`` (SGD) or by ``−lr g / (|g| + eps)`` (Adam's first step: m̂ = g, v̂ = g²), so::

        SGD:   L₀ − L₁ ≈ lr · s² ‖G Aᵀ‖²_F
        Adam:  L₀ − L₁ ≈ lr · Σ g² / (|g| + eps) ≈ lr · s ‖G Aᵀ‖₁   (entrywise 1-norm)

    With A's entries i.i.d. of variance σ_A², ``E‖G Aᵀ‖²_F = r σ_A² ‖G‖²_F`` and ``‖G Aᵀ‖₁`` grows
    like r too, so the first step's progress scales like ``s² r`` (SGD) and ``s r`` (Adam).
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(
            f"optimizer={optimizer!r} is not known; expected one of {', '.join(map(repr, OPTIMIZERS))}"
        )
    G, A = _check_factors(grad_W, A, None)
    g = scaling * (G @ A.T)
    if optimizer == "sgd":
        return float(lr * np.sum(g * g))
    return float(lr * np.sum(g * g / (np.abs(g) + eps)))


# --------------------------------------------------------------------------------------------
# Reading loss curves


def steps_to_tolerance(losses: Sequence[float] | np.ndarray, target: float) -> int | None:
    """The number of updates after which the loss first reached ``target`` (``losses[t] <=
    target`` at the smallest t, returned as t + 1), or None if it never did. NaN never counts."""
    losses = np.asarray(losses, dtype=np.float64)
    if losses.ndim != 1:
        raise ValueError(f"losses must be 1-D (one loss per update), got shape {losses.shape}")
    hits = np.flatnonzero(losses <= target)  # NaN compares False
    return int(hits[0]) + 1 if hits.size else None


def classify_run(
    losses: Sequence[float] | np.ndarray,
    start_loss: float,
    floor: float = 0.0,
    *,
    tol: float = 1e-2,
) -> str:
    """``"diverged"``, ``"converged"`` or ``"stalled"``, by this rule, checked in this order:

    * **diverged**: some loss is not finite, or the last loss is above ``start_loss``;
    * **converged**: the last loss is within ``tol`` of the way from ``start_loss`` down to
      ``floor`` (the best reachable loss): ``L_last − floor <= tol · (start_loss − floor)``;
    * **stalled**: anything else — finite and below the start, but short of the tolerance
      within the budget (too slow, or oscillating without settling).
    """
    losses = np.asarray(losses, dtype=np.float64)
    if losses.ndim != 1 or losses.size == 0:
        raise ValueError(f"losses must be a non-empty 1-D array, got shape {losses.shape}")
    if not (math.isfinite(start_loss) and math.isfinite(floor) and floor < start_loss):
        raise ValueError(
            f"need finite floor < start_loss, got floor={floor!r}, start_loss={start_loss!r}; "
            "floor is the best reachable loss (e.g. toy_loss_floor), start_loss the loss at step 0"
        )
    if not (0 < tol < 1):
        raise ValueError(f"tol={tol!r} must be in (0, 1): a fraction of start_loss − floor")
    last = losses[-1]
    if not np.all(np.isfinite(losses)) or last > start_loss:
        return "diverged"
    if last - floor <= tol * (start_loss - floor):
        return "converged"
    return "stalled"


def loglog_slope(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """The least-squares slope of ``log y`` against ``log x``: the exponent p in ``y ∝ x^p``."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or x.size < 2:
        raise ValueError(
            f"x and y must be 1-D of the same length >= 2, got shapes {x.shape} and {y.shape}"
        )
    if np.any(x <= 0) or np.any(y <= 0):
        raise ValueError("loglog_slope needs positive x and y (it fits log y = p log x + c)")
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])

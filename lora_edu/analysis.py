"""SVD tools for asking LoRA's questions: how low-rank is an update, and where does it point?

Every function takes a numpy array or a torch tensor (converted with ``.detach().cpu()``; torch
is never imported here) and computes in float64. Shapes, as everywhere in lora_edu:

- ``M``: any matrix ``(m, n)``; singular values ``σ_1 ≥ σ_2 ≥ … ≥ σ_min(m,n) ≥ 0``
- ``W``, ``delta_W``: ``(d_out, d_in)``
- ``A``: ``(r, d_in)`` — its right-singular vectors live in ``R^{d_in}``
- ``U``: ``(d_out, r)`` and ``V``: ``(d_in, r)``, orthonormal columns

Three groups, following the LoRA paper (Hu et al. 2021, arXiv:2106.09685):

1. Low rank: :func:`singular_values`, :func:`low_rank_approx` and :func:`low_rank_error`
   (Eckart–Young), :func:`effective_rank`, :func:`stable_rank`, :func:`rank_for_energy`.
2. §7.2 "what is the optimal rank?": :func:`subspace_similarity` and
   :func:`subspace_similarity_grid` (the heatmaps of the paper's Figures 3 and 4).
3. §7.3 "how does ΔW relate to W?": :func:`projection_norm`, :func:`amplification_factor`,
   :func:`random_projection_norm`, :func:`delta_w_report` (the rows of Table 7).
4. What an update does to given inputs (e.g. a vocabulary's embeddings): :func:`relative_shift`
   (‖ΔW x‖ / ‖W x‖ per input), against :func:`random_input_directions` (the same singular values
   and output directions, random input directions: a null for "does ΔW point at these inputs?"),
   and both together in :func:`moved_inputs_test` (do the inputs ΔW moves most score higher on
   some property than under the null?); on the output side, :func:`output_alignment_test` (does
   ΔW write along a direction something downstream reads, more than random outputs would?) and
   :func:`promoted_tokens_test` (do the tokens its output directions promote, read out through an
   unembedding, score higher than under random outputs?).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "relative_shift",
    "random_input_directions",
    "moved_inputs_test",
    "MovedInputsTest",
    "output_alignment_test",
    "AlignmentTest",
    "promoted_tokens_test",
    "PromotedTokensTest",
    "amplification_factor",
    "delta_w_report",
    "effective_rank",
    "low_rank_approx",
    "low_rank_error",
    "projection_norm",
    "random_projection_norm",
    "rank_for_energy",
    "singular_values",
    "stable_rank",
    "subspace_similarity",
    "subspace_similarity_grid",
]

# Energy fractions are compared with this slack so that fraction=1.0 is reached despite float
# rounding in the cumulative sum (the discarded tail of a rank-k matrix is ~1e-32 relative).
_ENERGY_RTOL = 1e-12


def _as_matrix(M: Any, name: str = "M") -> np.ndarray:
    """``M`` as a finite 2-D float64 numpy array (torch tensors are detached and moved to CPU)."""
    if hasattr(M, "detach"):
        M = M.detach().cpu().double().numpy()
    arr = np.asarray(M, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D matrix, got an array of shape {arr.shape} ({arr.ndim}-D); "
            "for a batch of matrices call the function once per matrix, for a vector use "
            "v.reshape(1, -1)"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} (shape {arr.shape}) contains NaN or inf; expected finite values")
    return arr


def _check_count(value: Any, what: str, name: str, upper: int, shape: tuple[int, ...]) -> int:
    """Validate a rank-like integer ``1 <= value <= upper`` (``upper`` = min of ``shape``)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{what} must be an integer, got {value!r} ({type(value).__name__})")
    if not 1 <= value <= upper:
        raise ValueError(
            f"{what}={value} is out of range for {name} of shape {shape}: expected "
            f"1 <= {what} <= {upper} (= min of the shape, the number of singular values)"
        )
    return int(value)


def _svd(M: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thin SVD ``M = U diag(s) Vt`` with ``U (m, k)``, ``s (k,)``, ``Vt (k, n)``, k = min(m, n)."""
    return np.linalg.svd(M, full_matrices=False)


def _top_singular_vectors(M: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    """The top-r left and right singular vectors of ``M`` as columns: ``(m, r)`` and ``(n, r)``."""
    U, _, Vt = _svd(M)
    return U[:, :r], Vt[:r].T


def _nonzero_singular_values(M: np.ndarray, name: str, what: str) -> np.ndarray:
    s = np.linalg.svd(M, compute_uv=False)
    if s[0] == 0.0:
        raise ValueError(f"{what} is undefined for the all-zero {name} of shape {M.shape}")
    return s


# ----------------------------------------------------------------------------------------------
# 1. Low rank
# ----------------------------------------------------------------------------------------------


def singular_values(M: Any) -> np.ndarray:
    """The singular values of ``M (m, n)`` in descending order, shape ``(min(m, n),)``."""
    return np.linalg.svd(_as_matrix(M), compute_uv=False)


def low_rank_approx(M: Any, r: int) -> np.ndarray:
    """The best rank-``r`` approximation of ``M (m, n)``: truncated SVD ``Σ_{i≤r} σ_i u_i v_iᵀ``.

    Eckart–Young–Mirsky: no matrix of rank ≤ r is closer to ``M`` in Frobenius (or spectral)
    norm. Returns an ``(m, n)`` array.
    """
    M = _as_matrix(M)
    r = _check_count(r, "r", "M", min(M.shape), M.shape)
    U, s, Vt = _svd(M)
    return (U[:, :r] * s[:r]) @ Vt[:r]


def low_rank_error(M: Any, r: int) -> float:
    """``||M - low_rank_approx(M, r)||_F = sqrt(Σ_{i>r} σ_i²)``, the norm of the discarded tail."""
    M = _as_matrix(M)
    r = _check_count(r, "r", "M", min(M.shape), M.shape)
    s = np.linalg.svd(M, compute_uv=False)
    return float(np.sqrt(np.sum(s[r:] ** 2)))


def effective_rank(M: Any) -> float:
    """Roy & Vetterli (2007) effective rank: ``exp(H(p))`` with ``p_i = σ_i / Σ_j σ_j``.

    ``H(p) = -Σ p_i log p_i`` (with 0 log 0 = 0) is the Shannon entropy of the normalised
    singular values, so the result lies in ``[1, min(m, n)]``: ``n`` for the identity ``(n, n)``,
    1 for a rank-1 matrix, and in between for a spectrum that decays smoothly.
    """
    M = _as_matrix(M)
    s = _nonzero_singular_values(M, "M", "the effective rank")
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-np.sum(p * np.log(p))))


def stable_rank(M: Any) -> float:
    """Stable rank ``||M||_F² / ||M||_2² = Σ σ_i² / σ_1²``; at most ``rank(M)``, and not fooled
    by tiny noise singular values (which barely change the numerator)."""
    M = _as_matrix(M)
    s = _nonzero_singular_values(M, "M", "the stable rank")
    return float(np.sum(s**2) / s[0] ** 2)


def rank_for_energy(M: Any, fraction: float) -> int:
    """The smallest ``r`` whose top-r squared singular values hold ``≥ fraction`` of ``||M||_F²``.

    Equivalently the smallest r with ``low_rank_error(M, r)² ≤ (1 - fraction) ||M||_F²``.
    ``fraction`` must lie in ``(0, 1]``; ``fraction=1.0`` gives the numerical rank.
    """
    M = _as_matrix(M)
    if not (isinstance(fraction, (int, float, np.floating)) and 0.0 < fraction <= 1.0):
        raise ValueError(
            f"fraction={fraction!r} is not an energy fraction: expected a number in (0, 1], "
            "e.g. 0.9 for 90% of ||M||_F²"
        )
    s = _nonzero_singular_values(M, "M", "rank_for_energy")
    cumulative = np.cumsum(s**2) / np.sum(s**2)
    return int(np.argmax(cumulative >= fraction * (1.0 - _ENERGY_RTOL)) + 1)


# ----------------------------------------------------------------------------------------------
# 2. Subspace similarity (LoRA paper §7.2)
# ----------------------------------------------------------------------------------------------


def _right_singular_vectors(A1: Any, A2: Any) -> tuple[np.ndarray, np.ndarray]:
    """Right-singular vectors of A1 and A2 as rows (``Vt``), after checking both are (·, d_in)."""
    A1 = _as_matrix(A1, "A1")
    A2 = _as_matrix(A2, "A2")
    if A1.shape[1] != A2.shape[1]:
        raise ValueError(
            f"A1 has shape {A1.shape} and A2 has shape {A2.shape}: both must be (r, d_in) with the "
            f"same d_in (got {A1.shape[1]} and {A2.shape[1]}); compare A matrices of the same "
            "layer, or pass B.T to compare B matrices"
        )
    for name, A in (("A1", A1), ("A2", A2)):
        # A zero matrix has no directions: its "singular vectors" would be an arbitrary basis
        # (and φ a meaningless 1.0), so it is refused as effective_rank refuses it.
        _nonzero_singular_values(A, name, "its subspace (top singular directions)")
    return _svd(A1)[2], _svd(A2)[2]


def subspace_similarity(A1: Any, A2: Any, i: int, j: int) -> float:
    """LoRA paper eq. (4): ``φ(A1, A2, i, j) = ||U_iᵀ U_j||_F² / min(i, j)``.

    ``U_i (d_in, i)`` holds the top-i right-singular vectors of ``A1 (r1, d_in)`` and ``U_j``
    the top-j of ``A2 (r2, d_in)``. ``φ ∈ [0, 1]``: 1 when the smaller subspace lies inside the
    larger one, 0 when they are orthogonal; two random subspaces of ``R^{d_in}`` give
    ``max(i, j) / d_in`` on average. ``1 ≤ i ≤ min(r1, d_in)``, ``1 ≤ j ≤ min(r2, d_in)``.
    An all-zero A1 or A2 has no subspace and raises ValueError (as ``effective_rank`` does);
    directions beyond a matrix's rank are an arbitrary completion, so keep i, j ≤ the ranks.
    """
    Vt1, Vt2 = _right_singular_vectors(A1, A2)
    i = _check_count(i, "i", "A1", Vt1.shape[0], (Vt1.shape[0], Vt1.shape[1]))
    j = _check_count(j, "j", "A2", Vt2.shape[0], (Vt2.shape[0], Vt2.shape[1]))
    overlap = Vt1[:i] @ Vt2[:j].T
    return float(np.sum(overlap**2) / min(i, j))


def subspace_similarity_grid(
    A1: Any, A2: Any, max_i: int | None = None, max_j: int | None = None
) -> np.ndarray:
    """``φ(A1, A2, i, j)`` for all ``1 ≤ i ≤ max_i``, ``1 ≤ j ≤ max_j``: shape ``(max_i, max_j)``,
    entry ``[i-1, j-1] = φ(i, j)`` — the heatmaps of the paper's Figures 3 and 4.

    ``max_i`` defaults to ``min(A1.shape)`` (all of A1's directions), ``max_j`` likewise. One SVD
    per matrix: ``||U_iᵀ U_j||_F²`` is a 2-D prefix sum of the squared overlaps ``(v1_a · v2_b)²``.
    """
    Vt1, Vt2 = _right_singular_vectors(A1, A2)
    max_i = Vt1.shape[0] if max_i is None else max_i
    max_j = Vt2.shape[0] if max_j is None else max_j
    max_i = _check_count(max_i, "max_i", "A1", Vt1.shape[0], (Vt1.shape[0], Vt1.shape[1]))
    max_j = _check_count(max_j, "max_j", "A2", Vt2.shape[0], (Vt2.shape[0], Vt2.shape[1]))
    squared = (Vt1[:max_i] @ Vt2[:max_j].T) ** 2
    prefix = squared.cumsum(axis=0).cumsum(axis=1)
    i = np.arange(1, max_i + 1)[:, None]
    j = np.arange(1, max_j + 1)[None, :]
    return prefix / np.minimum(i, j)


# ----------------------------------------------------------------------------------------------
# 3. How ΔW relates to W (LoRA paper §7.3, Table 7)
# ----------------------------------------------------------------------------------------------


def projection_norm(W: Any, U: Any, V: Any) -> float:
    """``||Uᵀ W V||_F``: how much of ``W (d_out, d_in)`` lies in the subspace pair (U, V).

    ``U (d_out, r)`` and ``V (d_in, r)`` hold orthonormal vectors as *columns*. The paper writes
    ``||Uᵀ W Vᵀ||_F`` because its V holds the right-singular vectors as *rows* (numpy's ``Vt``);
    it is the same number.
    """
    W = _as_matrix(W, "W")
    U = _as_matrix(U, "U")
    V = _as_matrix(V, "V")
    if U.shape[0] != W.shape[0] or V.shape[0] != W.shape[1]:
        raise ValueError(
            f"W has shape {W.shape} (d_out, d_in), so expected U of shape ({W.shape[0]}, r) and V "
            f"of shape ({W.shape[1]}, r) with vectors as columns; got U {U.shape} and V {V.shape}"
            " (if V holds the vectors as rows, as numpy's Vt does, pass V.T)"
        )
    return float(np.linalg.norm(U.T @ W @ V))


def _delta_and_W(delta_W: Any, W: Any, r: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Convert and validate the (ΔW, W, r) triple shared by the §7.3 functions."""
    delta_W = _as_matrix(delta_W, "delta_W")
    W = _as_matrix(W, "W")
    if delta_W.shape != W.shape:
        raise ValueError(
            f"delta_W has shape {delta_W.shape} but W has shape {W.shape}: both must be "
            "(d_out, d_in) of the same layer (delta_W = scaling * B @ A)"
        )
    return delta_W, W, _check_count(r, "r", "delta_W", min(W.shape), W.shape)


def amplification_factor(delta_W: Any, W: Any, r: int) -> float:
    """LoRA paper §7.3: ``||ΔW||_F / ||Uᵀ W V||_F``, U, V = top-r left/right singular vectors of ΔW.

    How strongly the update amplifies directions that ``W`` itself barely uses: the paper reports
    ~21.5 for r = 4 on GPT-3's W_q (6.91 / 0.32). ``delta_W`` and ``W`` are ``(d_out, d_in)``;
    ``1 ≤ r ≤ min(d_out, d_in)``. Returns ``inf`` if W has no component in that subspace.
    """
    delta_W, W, r = _delta_and_W(delta_W, W, r)
    return _amplification(
        np.linalg.norm(delta_W), projection_norm(W, *_top_singular_vectors(delta_W, r))
    )


def _amplification(delta_norm: float, projected: float) -> float:
    return math.inf if projected == 0.0 else float(delta_norm / projected)


def _random_orthonormal(n: int, r: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, r)`` orthonormal columns spanning a uniformly random r-dim subspace (QR of a
    Gaussian matrix)."""
    Q, _ = np.linalg.qr(rng.standard_normal((n, r)))
    return Q


def random_projection_norm(W: Any, r: int, seed: int = 0) -> float:
    """``||Uᵀ W V||_F`` for random orthonormal ``U (d_out, r)``, ``V (d_in, r)``: the paper's
    "Random" baseline in Table 7 (what a subspace with no relation to W picks up)."""
    W = _as_matrix(W, "W")
    r = _check_count(r, "r", "W", min(W.shape), W.shape)
    rng = np.random.default_rng(seed)
    return projection_norm(
        W, _random_orthonormal(W.shape[0], r, rng), _random_orthonormal(W.shape[1], r, rng)
    )


def delta_w_report(delta_W: Any, W: Any, r: int, seed: int = 0) -> dict[str, float]:
    """The rows of the LoRA paper's Table 7 for one layer, as a dict of floats:

    - ``"proj_W_on_delta"``: ``||Uᵀ W V||_F`` with U, V the top-r singular vectors of ΔW
    - ``"proj_W_on_W"``: the same with the top-r singular vectors of W itself
      (= ``sqrt(Σ_{i≤r} σ_i(W)²)``, the most any r-dim subspace pair can pick up)
    - ``"proj_W_on_random"``: the same with a random r-dim subspace (:func:`random_projection_norm`)
    - ``"W_norm"``: ``||W||_F``; ``"delta_W_norm"``: ``||ΔW||_F``
    - ``"amplification"``: ``delta_W_norm / proj_W_on_delta`` (:func:`amplification_factor`)
    """
    delta_W, W, r = _delta_and_W(delta_W, W, r)
    proj_on_delta = projection_norm(W, *_top_singular_vectors(delta_W, r))
    delta_norm = float(np.linalg.norm(delta_W))
    return {
        "r": r,
        "proj_W_on_delta": proj_on_delta,
        "proj_W_on_W": projection_norm(W, *_top_singular_vectors(W, r)),
        "proj_W_on_random": random_projection_norm(W, r, seed=seed),
        "W_norm": float(np.linalg.norm(W)),
        "delta_W_norm": delta_norm,
        "amplification": _amplification(delta_norm, proj_on_delta),
    }


def random_projection_null(W: Any, r: int, samples: int = 1000, seed: int = 0) -> np.ndarray:
    """``||Uᵀ W V||_F`` for ``samples`` independent random pairs of r-dim subspaces: the null
    distribution against which an observed projection is "more aligned with W than chance" only
    above its upper percentiles (one random draw, ``random_projection_norm``, is one sample)."""
    W = _as_matrix(W, "W")
    r = _check_count(r, "r", "W", min(W.shape), W.shape)
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples!r}")
    rng = np.random.default_rng(seed)
    return np.array([
        projection_norm(
            W, _random_orthonormal(W.shape[0], r, rng), _random_orthonormal(W.shape[1], r, rng)
        )
        for _ in range(samples)
    ])  # fmt: skip


def column_space_projection(W: Any, B: Any) -> float:
    """``||Qᵀ W||_F`` with Q an orthonormal basis of the column space of ``B (d_out, r)``: how much
    of W lives in the output directions that a LoRA update ``B A`` writes to. B starts at zero,
    so (unlike A's row space, which starts random and may barely move) its column space is made
    by training alone."""
    W, B = _as_matrix(W, "W"), _as_matrix(B, "B")
    if B.shape[0] != W.shape[0]:
        raise ValueError(f"B has {B.shape[0]} rows but W has {W.shape[0]}: B must be (d_out, r)")
    U, s, _ = np.linalg.svd(B, full_matrices=False)
    Q = U[:, s > s[0] * 1e-10] if s.size and s[0] > 0 else U[:, :0]
    return float(np.linalg.norm(Q.T @ W))


def random_column_projection_null(W: Any, r: int, samples: int = 1000, seed: int = 0) -> np.ndarray:
    """``||Qᵀ W||_F`` for ``samples`` random r-dim subspaces Q of the output space: the null
    distribution of ``column_space_projection``."""
    W = _as_matrix(W, "W")
    r = _check_count(r, "r", "W", W.shape[0], W.shape)
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples!r}")
    rng = np.random.default_rng(seed)
    return np.array(
        [
            float(np.linalg.norm(_random_orthonormal(W.shape[0], r, rng).T @ W))
            for _ in range(samples)
        ]
    )


def relative_shift(delta_W: Any, W: Any, X: Any) -> np.ndarray:
    """For each row ``x`` of ``X (n, d_in)``, how far the update moves it relative to what the
    weight makes of it: ``‖ΔW x‖ / ‖W x‖`` (``delta_W``, ``W``: ``(d_out, d_in)``)."""
    D, W, X = _as_matrix(delta_W, "delta_W"), _as_matrix(W, "W"), _as_matrix(X, "X")
    if not (D.shape == W.shape and X.shape[1] == W.shape[1]):
        raise ValueError(
            f"delta_W {D.shape} and W {W.shape} must have one shape and X {X.shape} rows of "
            f"length d_in = {W.shape[1]}"
        )
    return np.linalg.norm(X @ D.T, axis=1) / np.linalg.norm(X @ W.T, axis=1)


def random_input_directions(delta_W: Any, r: int, rng: np.random.Generator) -> np.ndarray:
    """A null for ``delta_W``: its top ``r`` singular values and left singular vectors (what it
    writes, and how strongly) with ``r`` random orthonormal input directions instead of its own,
    ``U_r S_r Qᵀ``. Anything ``delta_W`` does to particular inputs that this does as well is not
    about where ``delta_W`` reads."""
    D = _as_matrix(delta_W, "delta_W")
    r = _check_count(r, "rank", "r", min(D.shape), D.shape)
    U, S, _ = _svd(D)
    return (U[:, :r] * S[:r]) @ _random_orthonormal(D.shape[1], r, rng).T


@dataclass(frozen=True)
class MovedInputsTest:
    """What :func:`moved_inputs_test` found: ``order`` (the ``top`` inputs ΔW moves most, most
    first), ``observed`` (their mean score), ``nulls`` (the same mean under each random-direction
    draw) and the one-sided ``p_value`` (how often a null did at least as well, +1 smoothed)."""

    order: np.ndarray
    observed: float
    nulls: np.ndarray
    p_value: float


def moved_inputs_test(
    delta_W: Any,
    W: Any,
    X: Any,
    scores: Any,
    r: int,
    *,
    top: int = 50,
    draws: int = 200,
    rng: np.random.Generator | None = None,
) -> MovedInputsTest:
    """Does ``delta_W`` point at inputs that score high? Rank the rows of ``X (n, d_in)`` by
    :func:`relative_shift`, take the ``top`` moved most and compare their mean ``scores`` (one
    per row: a word's sentiment, how typical of a domain it is) with ``draws`` nulls of
    :func:`random_input_directions` at rank ``r`` (same singular values and outputs, random
    input directions)."""
    scores = np.asarray(scores, dtype=np.float64)
    X = _as_matrix(X, "X")
    if scores.shape != (X.shape[0],):
        raise ValueError(
            f"scores must hold one number per row of X ({X.shape[0]}), got {scores.shape}"
        )
    if not 1 <= top <= X.shape[0]:
        raise ValueError(f"top must lie in 1..{X.shape[0]} (the rows of X), got {top}")
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}")
    rng = rng if rng is not None else np.random.default_rng(0)

    def top_rows(D: Any) -> np.ndarray:
        return np.argsort(-relative_shift(D, W, X))[:top]

    order = top_rows(delta_W)
    observed = float(scores[order].mean())
    nulls = np.array(
        [scores[top_rows(random_input_directions(delta_W, r, rng))].mean() for _ in range(draws)]
    )
    return MovedInputsTest(
        order, observed, nulls, (1 + int((nulls >= observed).sum())) / (draws + 1)
    )


@dataclass(frozen=True)
class AlignmentTest:
    """What :func:`output_alignment_test` found: ``cosines`` (``|cos|`` of each of ΔW's top
    output directions with the read direction, largest singular value first), ``observed``
    (their singular-value-weighted mean), ``nulls`` (the same under random output directions)
    and the one-sided ``p_value``."""

    cosines: np.ndarray
    observed: float
    nulls: np.ndarray
    p_value: float


def output_alignment_test(
    delta_W: Any,
    read: Any,
    r: int,
    *,
    draws: int = 500,
    rng: np.random.Generator | None = None,
) -> AlignmentTest:
    """Does ``delta_W (d_out, d_in)`` write along ``read (d_out,)`` (e.g. the direction a
    classifier reads), more than an update with random outputs would? The statistic is the
    singular-value-weighted mean ``|cos|`` between ΔW's top ``r`` output directions (left
    singular vectors) and ``read``; the null keeps the singular values and draws ``r`` random
    orthonormal output directions, ``draws`` times."""
    D = _as_matrix(delta_W, "delta_W")
    read = np.asarray(read, dtype=np.float64).ravel()
    if read.shape != (D.shape[0],) or not np.linalg.norm(read) > 0:
        raise ValueError(f"read must be a non-zero vector of length d_out = {D.shape[0]}")
    r = _check_count(r, "rank", "r", min(D.shape), D.shape)
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}")
    rng = rng if rng is not None else np.random.default_rng(0)
    read = read / np.linalg.norm(read)
    U, S, _ = _svd(D)
    weights = S[:r] / S[:r].sum()
    cosines = np.abs(U[:, :r].T @ read)
    nulls = np.array(
        [weights @ np.abs(_random_orthonormal(D.shape[0], r, rng).T @ read) for _ in range(draws)]
    )
    observed = float(weights @ cosines)
    return AlignmentTest(
        cosines, observed, nulls, (1 + int((nulls >= observed).sum())) / (draws + 1)
    )


@dataclass(frozen=True)
class PromotedTokensTest:
    """What :func:`promoted_tokens_test` found: ``top_tokens`` (the ``k`` token ids the strongest
    output direction promotes, in the sign that scores higher), ``observed`` (the
    singular-value-weighted mean score of each direction's top tokens), ``nulls`` and the
    one-sided ``p_value``."""

    top_tokens: np.ndarray
    observed: float
    nulls: np.ndarray
    p_value: float


def promoted_tokens_test(
    delta_W: Any,
    readout: Any,
    scores: Any,
    r: int,
    *,
    eligible: Any = None,
    k: int = 50,
    draws: int = 100,
    rng: np.random.Generator | None = None,
) -> PromotedTokensTest:
    """Do the tokens ``delta_W (d_model, d_in)`` writes toward score high? Each of ΔW's top ``r``
    output directions ``u`` is read out as token logits ``readout @ u`` (``readout (V, d_model)``:
    e.g. the unembedding times the final norm's γ, a "logit lens"); a singular vector's sign is
    arbitrary, so each direction counts in the sign whose top ``k`` tokens (among ``eligible``)
    have the higher mean ``scores``. The statistic weights those means by the singular values;
    the null keeps the singular values and draws random orthonormal output directions."""
    D, R = _as_matrix(delta_W, "delta_W"), _as_matrix(readout, "readout")
    scores = np.asarray(scores, dtype=np.float64)
    if R.shape[1] != D.shape[0] or scores.shape != (R.shape[0],):
        raise ValueError(
            f"readout must be (V, d_out = {D.shape[0]}) and scores (V,); got {R.shape} and "
            f"{scores.shape}"
        )
    mask = np.ones(len(scores), bool) if eligible is None else np.asarray(eligible, bool)
    r = _check_count(r, "rank", "r", min(D.shape), D.shape)
    if not 1 <= k <= int(mask.sum()):
        raise ValueError(f"k must lie in 1..{int(mask.sum())} (the eligible tokens), got {k}")
    rng = rng if rng is not None else np.random.default_rng(0)
    U, S, _ = _svd(D)
    weights = S[:r] / S[:r].sum()

    def best_side(u: np.ndarray) -> tuple[float, np.ndarray]:
        logits = np.where(mask, R @ u, np.nan)
        sides = []
        for sign in (1.0, -1.0):
            top = np.argsort(-np.nan_to_num(sign * logits, nan=-np.inf))[:k]
            sides.append((float(scores[top].mean()), top))
        return max(sides, key=lambda side: side[0])

    def statistic(directions: np.ndarray) -> float:
        return float(weights @ np.array([best_side(u)[0] for u in directions.T]))

    observed = statistic(U[:, :r])
    nulls = np.array([statistic(_random_orthonormal(D.shape[0], r, rng)) for _ in range(draws)])
    p_value = (1 + int((nulls >= observed).sum())) / (draws + 1)
    return PromotedTokensTest(best_side(U[:, 0])[1], observed, nulls, p_value)

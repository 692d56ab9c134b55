"""Tests for lora_edu.analysis: low rank, subspace similarity (§7.2) and ΔW vs W (§7.3)."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lora_edu.analysis import (
    amplification_factor,
    delta_w_report,
    effective_rank,
    low_rank_approx,
    low_rank_error,
    projection_norm,
    random_projection_norm,
    rank_for_energy,
    singular_values,
    stable_rank,
    subspace_similarity,
    subspace_similarity_grid,
)


def gaussian(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


def orthonormal(n: int, seed: int) -> np.ndarray:
    return np.linalg.qr(gaussian(n, n, seed=seed))[0]


def rank_k(m: int, n: int, k: int, seed: int = 0) -> np.ndarray:
    return gaussian(m, k, seed=seed) @ gaussian(k, n, seed=seed + 1)


# --- low rank ---------------------------------------------------------------------------------


def test_singular_values_descending_and_match_numpy():
    M = gaussian(7, 5)
    s = singular_values(M)
    assert s.shape == (5,)
    assert np.all(np.diff(s) <= 0)
    np.testing.assert_allclose(s, np.linalg.svd(M, compute_uv=False))


@pytest.mark.parametrize("r", [1, 3, 6])
def test_eckart_young_error_is_tail_norm(r):
    M = gaussian(9, 6)
    s = np.linalg.svd(M, compute_uv=False)
    M_r = low_rank_approx(M, r)
    assert np.linalg.matrix_rank(M_r) == r
    tail = math.sqrt(np.sum(s[r:] ** 2))
    assert low_rank_error(M, r) == pytest.approx(tail, rel=1e-12, abs=1e-12)
    assert np.linalg.norm(M - M_r) == pytest.approx(tail, rel=1e-10, abs=1e-10)


def test_full_rank_approx_reconstructs_exactly():
    M = gaussian(4, 6)
    np.testing.assert_allclose(low_rank_approx(M, 4), M, atol=1e-12)
    assert low_rank_error(M, 4) == 0.0


def test_eckart_young_beats_other_rank_r_matrices():
    M, r = gaussian(12, 10, seed=3), 3
    best = low_rank_error(M, r)
    for seed in range(50):
        # a random rank-r matrix, and the best one with a random r-dim column space (Q Qᵀ M)
        assert np.linalg.norm(M - rank_k(12, 10, r, seed=seed)) > best
        Q = np.linalg.qr(gaussian(12, r, seed=100 + seed))[0]
        assert np.linalg.norm(M - Q @ Q.T @ M) > best
        # nudging the optimum along its own factors keeps rank r and can only do worse
        U, s, Vt = np.linalg.svd(M, full_matrices=False)
        nudged = (U[:, :r] * (s[:r] + 0.01 * gaussian(r, seed=seed))) @ Vt[:r]
        assert np.linalg.norm(M - nudged) >= best


def test_effective_rank_identity_and_rank_one():
    for n in (1, 2, 5, 16):
        assert effective_rank(np.eye(n)) == pytest.approx(n, rel=1e-12)
    assert effective_rank(np.outer(gaussian(6), gaussian(9, seed=1))) == pytest.approx(1, abs=1e-9)


def test_effective_rank_uses_singular_values_not_their_squares():
    # p = (3, 1) / 4, not (9, 1) / 10
    p = np.array([0.75, 0.25])
    expected = math.exp(-np.sum(p * np.log(p)))
    M = orthonormal(3, 5)[:, :2] @ np.diag([3.0, 1.0]) @ orthonormal(2, 6)
    assert effective_rank(M) == pytest.approx(expected, rel=1e-12)


def test_effective_rank_between_one_and_min_shape_and_scale_invariant():
    M = gaussian(5, 8) * np.array([10.0, 3.0, 1.0, 0.3, 0.1])[:, None]
    erank = effective_rank(M)
    assert 1.0 < erank < 5.0
    assert effective_rank(-7.5 * M) == pytest.approx(erank, rel=1e-12)


@pytest.mark.parametrize("k", [1, 2, 5])
def test_stable_rank_at_most_rank(k):
    M = rank_k(10, 8, k, seed=k)
    assert 1.0 <= stable_rank(M) <= k + 1e-9
    assert stable_rank(np.eye(6)) == pytest.approx(6.0)
    assert stable_rank(np.diag([2.0, 1.0])) == pytest.approx(5.0 / 4.0)


def test_rank_for_energy():
    # energies 9, 4, 1 out of 14, hidden behind random rotations
    M = orthonormal(5, 0)[:, :3] @ np.diag([3.0, 2.0, 1.0]) @ orthonormal(4, 1)[:, :3].T
    assert rank_for_energy(M, 9 / 14) == 1
    assert rank_for_energy(M, 0.65) == 2
    assert rank_for_energy(M, 13 / 14) == 2
    assert rank_for_energy(M, 0.93) == 3
    assert rank_for_energy(M, 1.0) == 3  # numerical rank, not min(shape) = 4
    assert rank_for_energy(M, 1e-9) == 1


@pytest.mark.parametrize("fraction", [0.5, 0.9, 0.99])
def test_rank_for_energy_agrees_with_low_rank_error(fraction):
    M = gaussian(10, 7, seed=2)
    r = rank_for_energy(M, fraction)
    total = np.linalg.norm(M) ** 2
    assert low_rank_error(M, r) ** 2 <= (1 - fraction) * total * (1 + 1e-9)
    if r > 1:
        assert low_rank_error(M, r - 1) ** 2 > (1 - fraction) * total


# --- subspace similarity (§7.2) -------------------------------------------------------------


def test_similarity_of_a_matrix_with_itself_is_one():
    A = gaussian(8, 20)
    for i in range(1, 9):
        assert subspace_similarity(A, A, i, i) == pytest.approx(1.0, rel=1e-12)


def test_similarity_known_values():
    e = np.eye(4)
    assert subspace_similarity(e[:2], e[2:], 2, 2) == pytest.approx(0.0, abs=1e-15)
    # span(e0) ⊂ span(e0, e1): the smaller subspace lies inside the larger one
    assert subspace_similarity(e[:1], e[:2], 1, 2) == pytest.approx(1.0)
    # 45° apart: cos² = 1/2
    a = np.array([[1.0, 0.0, 0.0, 0.0]])
    b = np.array([[1.0, 1.0, 0.0, 0.0]])
    assert subspace_similarity(a, b, 1, 1) == pytest.approx(0.5)


@settings(max_examples=40, deadline=None)
@given(
    r1=st.integers(1, 6),
    r2=st.integers(1, 6),
    d_in=st.integers(1, 10),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_similarity_in_unit_interval_and_symmetric(r1, r2, d_in, seed, data):
    A1, A2 = gaussian(r1, d_in, seed=seed), gaussian(r2, d_in, seed=seed + 1)
    i = data.draw(st.integers(1, min(r1, d_in)), label="i")
    j = data.draw(st.integers(1, min(r2, d_in)), label="j")
    phi = subspace_similarity(A1, A2, i, j)
    assert -1e-12 <= phi <= 1 + 1e-12
    assert subspace_similarity(A2, A1, j, i) == pytest.approx(phi, abs=1e-12)


def test_similarity_depends_only_on_the_row_space():
    A1, A2 = gaussian(4, 12, seed=0), gaussian(6, 12, seed=1)
    reference = subspace_similarity_grid(A1, A2)
    # scaling all of A, or rotating its rows, leaves every right-singular vector in place
    np.testing.assert_allclose(subspace_similarity_grid(-3.0 * A1, A2), reference, atol=1e-10)
    np.testing.assert_allclose(
        subspace_similarity_grid(orthonormal(4, 7) @ A1, A2), reference, atol=1e-10
    )
    # any invertible mixing G keeps the row space, so φ at i = r (the whole row space) is unchanged
    G = gaussian(4, 4, seed=9) + 3 * np.eye(4)
    mixed = G @ A1
    for j in range(1, 7):
        assert subspace_similarity(mixed, A2, 4, j) == pytest.approx(reference[3, j - 1], abs=1e-10)
    # ... but it reorders the singular directions, so φ at i < r may change: the top-i directions
    # are a property of A's singular values, not of its row space alone
    assert not np.allclose(subspace_similarity_grid(mixed, A2)[:3], reference[:3], atol=1e-3)


def test_grid_equals_scalar_function():
    A1, A2 = gaussian(5, 16, seed=4), gaussian(8, 16, seed=5)
    grid = subspace_similarity_grid(A1, A2)
    assert grid.shape == (5, 8)
    for i in range(1, 6):
        for j in range(1, 9):
            assert grid[i - 1, j - 1] == pytest.approx(subspace_similarity(A1, A2, i, j), abs=1e-12)
    np.testing.assert_allclose(subspace_similarity_grid(A1, A2, max_i=3, max_j=2), grid[:3, :2])


def test_grid_of_random_matrices_is_near_the_random_baseline():
    # two independent random i-, j-dim subspaces of R^d have E[φ] = max(i, j) / d
    d = 64
    grids = [
        subspace_similarity_grid(gaussian(4, d, seed=s), gaussian(4, d, seed=s + 1000))
        for s in range(200)
    ]
    i, j = np.meshgrid(np.arange(1, 5), np.arange(1, 5), indexing="ij")
    np.testing.assert_allclose(np.mean(grids, axis=0), np.maximum(i, j) / d, rtol=0.15)


# --- ΔW vs W (§7.3) -------------------------------------------------------------------------


def test_amplification_factor_known_answer():
    # W = P diag(10, 3, 0.5, 0.2) Qᵀ and ΔW = 5 p_3 q_3ᵀ: ΔW points along W's third direction,
    # where W has weight 0.5, so the update amplifies it by 5 / 0.5 = 10
    P, Q = orthonormal(4, 1), orthonormal(4, 2)
    W = P @ np.diag([10.0, 3.0, 0.5, 0.2]) @ Q.T
    delta_W = 5.0 * np.outer(P[:, 2], Q[:, 2])
    assert amplification_factor(delta_W, W, 1) == pytest.approx(10.0, rel=1e-10)
    report = delta_w_report(delta_W, W, 1)
    assert report["proj_W_on_delta"] == pytest.approx(0.5, rel=1e-10)
    assert report["proj_W_on_W"] == pytest.approx(10.0, rel=1e-10)
    assert report["W_norm"] == pytest.approx(math.sqrt(100 + 9 + 0.25 + 0.04))
    assert report["delta_W_norm"] == pytest.approx(5.0)
    assert report["amplification"] == pytest.approx(10.0, rel=1e-10)
    assert report["proj_W_on_random"] == random_projection_norm(W, 1, seed=0)
    # no component of W in ΔW's directions: infinite amplification, said plainly
    e = np.eye(4)
    assert amplification_factor(np.outer(e[2], e[3]), np.diag([1.0, 2.0, 0.0, 0.0]), 1) == math.inf


def test_projection_norm_top_singular_vectors_pick_up_the_most():
    W = gaussian(8, 6, seed=3)
    U, s, Vt = np.linalg.svd(W)
    for r in (1, 3, 6):
        best = projection_norm(W, U[:, :r], Vt[:r].T)
        assert best == pytest.approx(math.sqrt(np.sum(s[:r] ** 2)))
        for seed in range(10):
            assert random_projection_norm(W, r, seed=seed) <= best + 1e-12
    assert random_projection_norm(W, 2, seed=0) == random_projection_norm(W, 2, seed=0)
    assert random_projection_norm(W, 2, seed=0) != random_projection_norm(W, 2, seed=1)


# --- torch tensors ----------------------------------------------------------------------------


def test_module_does_not_import_torch():
    code = "import sys, lora_edu.analysis; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_torch_tensors_give_the_same_results():
    torch = pytest.importorskip("torch", reason="torch not installed; numpy path tested above")
    M_np, A1_np, A2_np = gaussian(6, 5), gaussian(3, 5, seed=1), gaussian(4, 5, seed=2)
    W_np = gaussian(6, 5, seed=3)
    M = torch.tensor(M_np, requires_grad=True)  # .detach() must be used, not .numpy() directly
    A1, A2 = torch.tensor(A1_np, dtype=torch.float32), torch.tensor(A2_np)
    W = torch.tensor(W_np)
    tol = {"rel": 1e-6, "abs": 1e-6}  # A1 went through float32
    np.testing.assert_allclose(singular_values(M), singular_values(M_np))
    np.testing.assert_allclose(low_rank_approx(M, 2), low_rank_approx(M_np, 2))
    assert low_rank_error(M, 2) == pytest.approx(low_rank_error(M_np, 2))
    assert effective_rank(M) == pytest.approx(effective_rank(M_np))
    assert stable_rank(M) == pytest.approx(stable_rank(M_np))
    assert rank_for_energy(M, 0.9) == rank_for_energy(M_np, 0.9)
    assert subspace_similarity(A1, A2, 2, 3) == pytest.approx(
        subspace_similarity(A1_np, A2_np, 2, 3), **tol
    )
    np.testing.assert_allclose(
        subspace_similarity_grid(A1, A2), subspace_similarity_grid(A1_np, A2_np), atol=1e-6
    )
    assert amplification_factor(M, W, 2) == pytest.approx(amplification_factor(M_np, W_np, 2))
    assert random_projection_norm(W, 2) == pytest.approx(random_projection_norm(W_np, 2))
    U, V = torch.linalg.qr(W)[0][:, :2], torch.eye(5, dtype=torch.float64)[:, :2]
    assert projection_norm(W, U, V) == pytest.approx(projection_norm(W_np, U.numpy(), V.numpy()))
    assert delta_w_report(M, W, 2) == pytest.approx(delta_w_report(M_np, W_np, 2))


# --- errors teach -----------------------------------------------------------------------------


def test_bad_inputs_raise_value_errors_that_name_the_problem():
    M = gaussian(4, 6)
    with pytest.raises(ValueError, match=r"M must be a 2-D matrix, got an array of shape \(6,\)"):
        singular_values(np.ones(6))
    with pytest.raises(ValueError, match=r"shape \(2, 3, 4\) \(3-D\)"):
        effective_rank(np.ones((2, 3, 4)))
    with pytest.raises(ValueError, match="contains NaN or inf"):
        stable_rank(np.array([[1.0, np.nan]]))
    with pytest.raises(
        ValueError, match=r"r=0 is out of range for M of shape \(4, 6\): expected 1 <= r <= 4"
    ):
        low_rank_approx(M, 0)
    with pytest.raises(ValueError, match=r"r=5 is out of range .* 1 <= r <= 4"):
        low_rank_error(M, 5)
    with pytest.raises(ValueError, match=r"r must be an integer, got 2.0"):
        low_rank_approx(M, 2.0)
    with pytest.raises(
        ValueError, match=r"fraction=0 is not an energy fraction: expected a number in \(0, 1\]"
    ):
        rank_for_energy(M, 0)
    with pytest.raises(ValueError, match=r"fraction=1.5"):
        rank_for_energy(M, 1.5)
    with pytest.raises(ValueError, match="undefined for the all-zero M"):
        effective_rank(np.zeros((3, 3)))


def test_bad_similarity_inputs():
    A1, A2 = gaussian(3, 8), gaussian(5, 8, seed=1)
    with pytest.raises(
        ValueError, match=r"i=4 is out of range for A1 of shape \(3, 8\): expected 1 <= i <= 3"
    ):
        subspace_similarity(A1, A2, 4, 1)
    with pytest.raises(ValueError, match=r"j=0 is out of range for A2 .* 1 <= j <= 5"):
        subspace_similarity(A1, A2, 1, 0)
    with pytest.raises(ValueError, match=r"max_j=6 is out of range for A2"):
        subspace_similarity_grid(A1, A2, max_j=6)
    with pytest.raises(ValueError, match=r"same d_in \(got 8 and 7\)"):
        subspace_similarity(A1, gaussian(3, 7), 1, 1)
    with pytest.raises(ValueError, match=r"A2 must be a 2-D matrix"):
        subspace_similarity_grid(A1, np.ones(8))


def test_bad_delta_w_inputs():
    W = gaussian(6, 4)
    with pytest.raises(ValueError, match=r"delta_W has shape \(4, 6\) but W has shape \(6, 4\)"):
        amplification_factor(W.T, W, 1)
    with pytest.raises(ValueError, match=r"r=5 is out of range for delta_W of shape \(6, 4\)"):
        delta_w_report(W, W, 5)
    with pytest.raises(ValueError, match=r"r=0 is out of range for W"):
        random_projection_norm(W, 0)
    with pytest.raises(
        ValueError, match=r"expected U of shape \(6, r\) and V of shape \(4, r\).*pass V.T"
    ):
        projection_norm(W, np.eye(6)[:, :2], np.eye(4)[:2])


def test_zero_matrices_have_no_subspace_for_any_measure():
    zero, a = np.zeros((2, 5)), np.arange(10.0).reshape(2, 5)
    for call in (
        lambda: subspace_similarity(zero, zero, 1, 1),
        lambda: subspace_similarity(a, zero, 1, 1),
        lambda: subspace_similarity_grid(zero, a),
        lambda: effective_rank(zero),
        lambda: stable_rank(zero),
    ):
        with pytest.raises(ValueError, match="undefined for the all-zero"):
            call()
    assert subspace_similarity(a, a, 1, 1) == pytest.approx(1.0)


def test_random_projection_null_and_column_space_projection():
    from lora_edu.analysis import (
        column_space_projection,
        random_column_projection_null,
        random_projection_norm,
        random_projection_null,
    )

    rng = np.random.default_rng(0)
    W = rng.standard_normal((40, 30))
    null = random_projection_null(W, 3, samples=400, seed=1)
    assert null.shape == (400,) and np.all(null > 0)
    # E||Uᵀ W V||² = r² ||W||² / (d_out d_in) for independent uniform subspaces
    assert np.mean(null**2) == pytest.approx(9 * np.sum(W**2) / (40 * 30), rel=0.15)
    assert random_projection_norm(W, 3, seed=0) > 0
    U = np.linalg.svd(W)[0]
    assert column_space_projection(W, U[:, :3] * 7) == pytest.approx(
        np.sqrt(np.sum(np.linalg.svd(W, compute_uv=False)[:3] ** 2))
    )  # B along W's top output directions picks up W's top singular values
    col_null = random_column_projection_null(W, 3, samples=300, seed=2)
    assert np.mean(col_null**2) == pytest.approx(3 * np.sum(W**2) / 40, rel=0.15)
    assert column_space_projection(W, np.zeros((40, 3))) == 0.0
    with pytest.raises(ValueError, match="rows"):
        column_space_projection(W, np.ones((30, 2)))
    for null in (random_projection_null, random_column_projection_null):
        with pytest.raises(ValueError, match="samples must be at least 1"):
            null(W, 3, samples=0)


def test_relative_shift_is_the_ratio_of_norms_row_by_row():
    from lora_edu.analysis import relative_shift

    rng = np.random.default_rng(0)
    W, D, X = rng.normal(size=(5, 4)), rng.normal(size=(5, 4)), rng.normal(size=(3, 4))
    expected = [np.linalg.norm(D @ x) / np.linalg.norm(W @ x) for x in X]
    np.testing.assert_allclose(relative_shift(D, W, X), expected)
    with pytest.raises(ValueError, match="rows of length d_in = 4"):
        relative_shift(D, W, X[:, :3])


def test_random_input_directions_keep_the_spectrum_and_outputs_but_not_the_inputs():
    from lora_edu.analysis import random_input_directions

    rng = np.random.default_rng(1)
    D = rng.normal(size=(8, 2)) @ rng.normal(size=(2, 6))  # rank 2
    N = random_input_directions(D, 2, np.random.default_rng(0))
    np.testing.assert_allclose(singular_values(N)[:2], singular_values(D)[:2], rtol=1e-10)
    U = np.linalg.svd(D)[0][:, :2]
    np.testing.assert_allclose(U @ U.T @ N, N, atol=1e-10)  # writes into D's output space
    Vd, Vn = np.linalg.svd(D)[2][:2].T, np.linalg.svd(N)[2][:2].T
    assert subspace_similarity(Vd.T, Vn.T, 2, 2) < 0.99  # reads elsewhere


def test_moved_inputs_test_finds_inputs_an_update_reads_and_only_those():
    from lora_edu.analysis import moved_inputs_test

    rng = np.random.default_rng(0)
    d, n = 32, 400
    X = rng.normal(size=(n, d))
    W = rng.normal(size=(d, d))
    scores = rng.normal(size=n)
    hot = np.argsort(-scores)[:20]  # the 20 best-scoring inputs
    reads = np.linalg.qr(X[hot[:4]].T)[0].T  # ΔW reads the span of four of them
    B = rng.normal(size=(d, 4))
    found = moved_inputs_test(B @ reads, W, X, scores, 4, top=20, draws=100, rng=rng)
    assert found.p_value < 0.05 and found.observed > found.nulls.max() - 1e-12
    assert set(hot[:4]) <= set(found.order.tolist())
    elsewhere = B @ np.linalg.qr(rng.normal(size=(d, 4)))[0].T  # reads random directions
    blind = moved_inputs_test(elsewhere, W, X, scores, 4, top=20, draws=100, rng=rng)
    assert blind.p_value > 0.05
    with pytest.raises(ValueError, match="one number per row of X"):
        moved_inputs_test(elsewhere, W, X, scores[:-1], 4)
    with pytest.raises(ValueError, match="top must lie in 1..400"):
        moved_inputs_test(elsewhere, W, X, scores, 4, top=0)


def test_output_alignment_test_sees_an_update_that_writes_where_a_reader_reads():
    from lora_edu.analysis import output_alignment_test

    rng = np.random.default_rng(0)
    d, r = 64, 4
    read = rng.normal(size=d)
    A = rng.normal(size=(r, d))
    B = rng.normal(size=(d, r))
    B[:, 0] = 5 * read / np.linalg.norm(read)  # the strongest output direction is the reader's
    found = output_alignment_test(B @ A, read, r, draws=200, rng=rng)
    assert found.p_value < 0.01 and found.cosines.max() > 0.8
    elsewhere = output_alignment_test(rng.normal(size=(d, r)) @ A, read, r, draws=200, rng=rng)
    assert elsewhere.p_value > 0.05 and elsewhere.observed < 0.5
    with pytest.raises(ValueError, match="non-zero vector of length d_out = 64"):
        output_alignment_test(B @ A, np.zeros(d), r)


def test_promoted_tokens_test_reads_output_directions_through_a_readout():
    from lora_edu.analysis import promoted_tokens_test

    rng = np.random.default_rng(0)
    V, d, r = 300, 32, 3
    readout = rng.normal(size=(V, d))
    scores = rng.normal(size=V)
    hot = np.argsort(-scores)[:10]
    shared = rng.normal(size=d)
    readout[hot] = shared + 0.3 * rng.normal(size=(10, d))  # the best tokens share a direction
    readout *= np.sqrt(d) / np.linalg.norm(readout, axis=1, keepdims=True)  # rows of one length
    target = -shared  # written with a minus sign: the test must try both signs
    B = rng.normal(size=(d, r))
    B[:, 0] = 100 * target / np.linalg.norm(target)  # by far the strongest output direction
    A = rng.normal(size=(r, d))
    found = promoted_tokens_test(B @ A, readout, scores, r, k=10, draws=100, rng=rng)
    assert found.p_value < 0.05 and len(set(found.top_tokens) & set(hot)) >= 5
    blind = promoted_tokens_test(rng.normal(size=(d, r)) @ A, readout, scores, r, k=10, draws=100,
                                 rng=rng)  # fmt: skip
    assert blind.p_value > 0.05
    with pytest.raises(ValueError, match="readout must be"):
        promoted_tokens_test(B @ A, readout[:, :5], scores, r)
    with pytest.raises(ValueError, match="k must lie in 1..2"):
        promoted_tokens_test(B @ A, readout, scores, r, k=5, eligible=np.arange(V) < 2)

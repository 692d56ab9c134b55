"""Paired significance tests: is run A really better than run B on the same examples?

Two runs scored on the same sentences disagree on a few of them. If both were equally good, each
disagreement would be A's win or B's win with probability ½; McNemar's exact test asks how
surprising the observed split is. It uses only the disagreements, so it is much sharper than
comparing two accuracies with their own error bars. (For corpus BLEU, where scores do not split
into per-sentence wins, ``lora_edu.generate.paired_bootstrap`` does the same job.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def _as_verdicts(correct: str | Sequence[bool] | np.ndarray, name: str) -> np.ndarray:
    """A bool array from ``"0110…"`` (a record's ``eval_correct``) or booleans."""
    if isinstance(correct, str):
        if set(correct) - {"0", "1"}:
            raise ValueError(f"{name} must be a string of 0s and 1s, got {correct[:20]!r}…")
        return np.frombuffer(correct.encode(), dtype=np.uint8) == ord("1")
    return np.asarray(correct, dtype=bool)


def mcnemar(
    correct_a: str | Sequence[bool] | np.ndarray, correct_b: str | Sequence[bool] | np.ndarray
) -> dict[str, Any]:
    """McNemar's exact test on two runs' per-example verdicts (right/wrong, same examples, same
    order). Returns ``a_only`` (examples only A gets right), ``b_only``, ``n`` (examples),
    ``delta`` (accuracy of A minus B) and the two-sided exact ``p_value``
    (``2 · P(X ≤ min(a_only, b_only))`` for X ~ Binomial(a_only + b_only, ½), capped at 1)."""
    a, b = _as_verdicts(correct_a, "correct_a"), _as_verdicts(correct_b, "correct_b")
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(
            f"mcnemar needs two verdict lists over the same examples; got {a.shape} and {b.shape}"
        )
    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(~a & b))
    k, n = min(a_only, b_only), a_only + b_only
    p = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n) if n else 1.0
    return {
        "a_only": a_only,
        "b_only": b_only,
        "n": int(a.size),
        "delta": float(a.mean() - b.mean()),
        "p_value": p,
    }


def binomial_se(accuracy: float, n: int) -> float:
    """The standard error ``sqrt(p (1 − p) / n)`` of an accuracy ``p`` measured on ``n`` examples."""
    if not 0.0 <= accuracy <= 1.0 or n < 1:
        raise ValueError(f"need an accuracy in [0, 1] and n >= 1, got {accuracy!r} and {n!r}")
    return math.sqrt(accuracy * (1.0 - accuracy) / n)


#: The one single-run noise figure the notebooks quote for SST-2, in accuracy points: the binomial
#: standard error of an accuracy of 85 % (the headline runs' level) on the 872 validation
#: sentences, about 1.2. Different seeds add their own spread on top of it. Comparisons are not
#: decided by it but by paired tests on the same sentences (``mcnemar``, ``paired_bootstrap``).
SST2_NOISE_POINTS = 100 * binomial_se(0.85, 872)


def _per_example(run: Any, metric: str, name: str) -> np.ndarray:
    """One run's per-example data: verdicts ``(n,)`` for accuracy, ``(n, 3)`` counts for F1."""
    if metric == "accuracy":
        return _as_verdicts(run, name).astype(float)
    counts = np.asarray(run, dtype=float)
    if counts.ndim != 2 or counts.shape[1] != 3:
        raise ValueError(
            f"{name}: entity F1 needs one (hits, predicted, true) triple per example, got shape "
            f"{counts.shape}"
        )
    return counts


def _score(data: np.ndarray, weights: np.ndarray, metric: str) -> np.ndarray:
    """The metric of one run under each resample's example weights ``(samples, n)``."""
    if metric == "accuracy":
        return weights @ data / weights.sum(axis=1)
    hits, predicted, true = (weights @ data).T
    total = predicted + true
    return np.divide(2 * hits, total, out=np.zeros_like(total), where=total > 0)


def paired_bootstrap(
    runs_a: Sequence[Any],
    runs_b: Sequence[Any],
    *,
    metric: str = "accuracy",
    samples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Is method A better than method B, over several seeds each, on the same examples?

    ``runs_a`` and ``runs_b`` hold one entry per run (seed): for ``metric="accuracy"`` its
    per-example verdicts (a record's ``eval_correct``); for ``metric="entity_f1"`` its
    per-sentence ``(hits, predicted, true)`` entity counts (``eval_entity_counts``). The examples
    are resampled with replacement ``samples`` times, the same resample for every run; each time
    the mean metric of A's runs minus that of B's runs is recomputed. Returns ``delta`` (the
    observed difference of the means), its 95 % interval ``ci_low``, ``ci_high``, the runs per
    side, and the two-sided ``p_value``: twice the share of resamples whose difference has the
    other sign (or is zero), counted as ``(k + 1) / (samples + 1)`` so that it is never 0, capped
    at 1."""
    if metric not in ("accuracy", "entity_f1"):
        raise ValueError(f"metric must be 'accuracy' or 'entity_f1', got {metric!r}")
    if not runs_a or not runs_b:
        raise ValueError("paired_bootstrap needs at least one run on each side")
    data_a = [_per_example(run, metric, f"runs_a[{i}]") for i, run in enumerate(runs_a)]
    data_b = [_per_example(run, metric, f"runs_b[{i}]") for i, run in enumerate(runs_b)]
    n = len(data_a[0])
    if n == 0 or any(len(d) != n for d in data_a + data_b):
        raise ValueError(
            f"every run must cover the same examples; got {sorted({len(d) for d in data_a + data_b})}"
        )
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=samples).astype(float)
    ones = np.ones((1, n))

    def mean_metric(runs: list[np.ndarray], w: np.ndarray) -> np.ndarray:
        return np.mean([_score(d, w, metric) for d in runs], axis=0)

    observed = float(mean_metric(data_a, ones)[0] - mean_metric(data_b, ones)[0])
    deltas = mean_metric(data_a, weights) - mean_metric(data_b, weights)
    other = np.sum(deltas <= 0) if observed > 0 else np.sum(deltas >= 0)
    low, high = np.percentile(deltas, [2.5, 97.5])
    return {
        "delta": observed,
        "ci_low": float(low),
        "ci_high": float(high),
        "runs_a": len(data_a),
        "runs_b": len(data_b),
        "n": n,
        "p_value": float(min(1.0, 2 * (other + 1) / (samples + 1))),
    }

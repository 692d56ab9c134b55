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
#: Two *single* runs scored on SST-2's 872 validation sentences, with no per-sentence verdicts to
#: pair them, differ by chance with a standard deviation of about √2 · ``SST2_NOISE_POINTS``;
#: closer than twice that, about 3.4 points, they are a tie. (Runs that kept per-sentence verdicts
#: are compared by paired tests instead, which resolve much smaller differences.)
SINGLE_RUN_TIE_POINTS = 2 * math.sqrt(2) * SST2_NOISE_POINTS


#: The shape each metric's per-example data must have: the width of its rows (None: one number
#: per example) and what the rows are, for the error message.
_PER_EXAMPLE_SHAPES = {
    "mean": (None, "a mean needs one value per example"),
    "entity_f1": (3, "entity F1 needs one (hits, predicted, true) triple per example"),
    "bleu": (10, "BLEU needs sacrebleu's 10 statistics per example (generate.bleu_statistics)"),
}


def _per_example(run: Any, metric: str, name: str) -> np.ndarray:
    """One run's per-example data: verdicts ``(n,)`` for accuracy, values ``(n,)`` for a mean,
    ``(n, 3)`` entity counts for F1, ``(n, 10)`` BLEU statistics."""
    if metric == "accuracy":
        return _as_verdicts(run, name).astype(float)
    width, what = _PER_EXAMPLE_SHAPES[metric]
    data = np.asarray(run, dtype=float)
    fits = data.ndim == 1 if width is None else data.ndim == 2 and data.shape[1] == width
    if not fits:
        raise ValueError(f"{name}: {what}, got shape {data.shape}")
    return data


def _score(data: np.ndarray, weights: np.ndarray, metric: str) -> np.ndarray:
    """The metric of one run under each resample's example weights ``(samples, n)``."""
    if metric in ("accuracy", "mean"):
        return weights @ data / weights.sum(axis=1)
    if metric == "bleu":  # corpus BLEU / 100 of each resample, from its summed statistics
        from sacrebleu.metrics import BLEU

        bleu = BLEU()
        return np.array([bleu._compute_score_from_stats(row.tolist()).score / 100
                         for row in weights @ data])  # fmt: skip
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
    resample_runs: bool = True,
) -> dict[str, Any]:
    """Is method A better than method B, over several seeds each, on the same examples?

    ``runs_a`` and ``runs_b`` hold one entry per run (seed): for ``metric="accuracy"`` its
    per-example verdicts (a record's ``eval_correct``); for ``metric="entity_f1"`` its
    per-sentence ``(hits, predicted, true)`` entity counts (``eval_entity_counts``); for
    ``metric="bleu"`` its per-example BLEU statistics (``generate.bleu_statistics``; the
    metric is corpus BLEU / 100, recomputed from each resample's summed statistics, as in
    Koehn 2004); for ``metric="mean"`` one number per example (a style sample's ink share), averaged. The examples
    are resampled with replacement ``samples`` times, the same resample for every run; each time
    the mean metric of A's runs minus that of B's runs is recomputed. With ``resample_runs``
    each resample also draws each side's runs with replacement (a two-level bootstrap), so that
    the seed-to-seed spread widens the interval as well as the choice of examples does; with one
    run per side it changes nothing. Returns ``delta`` (the
    observed difference of the means), its 95 % interval ``ci_low``, ``ci_high``, the runs per
    side, and the two-sided ``p_value``: twice the share of resamples whose difference has the
    other sign (or is zero), counted as ``(k + 1) / (samples + 1)`` so that it is never 0, capped
    at 1."""
    if metric not in ("accuracy", "entity_f1", "mean", "bleu"):
        raise ValueError(
            f"metric must be 'accuracy', 'entity_f1', 'mean' or 'bleu', got {metric!r}"
        )
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
        scores = np.stack([_score(d, w, metric) for d in runs], axis=1)  # (resamples, runs)
        if not resample_runs or len(runs) == 1 or len(w) == 1:
            return scores.mean(axis=1)
        drawn = rng.integers(len(runs), size=scores.shape)
        return np.take_along_axis(scores, drawn, axis=1).mean(axis=1)

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


#: Where each metric keeps its per-example data in a run's record, for paired tests.
PER_EXAMPLE_FIELDS = {
    "accuracy": "eval_correct",
    "accuracy_at_iou": "eval_correct",  # detection: class right and box overlap ≥ 0.5
    "zero_shot_accuracy": "eval_correct",  # image–text matching
    "content_accuracy": "eval_correct",  # captioning: digits and directions all named right
    "entity_f1": "eval_entity_counts",
    "bleu": "eval_bleu_stats",  # generation: sacrebleu's statistics per input (budget study)
    # a style adapter's samples: each called the style's digit, or inside the style's ink band
    "digit_share": "eval_correct",
    "thick_share": "eval_correct",
    "ink_share": "eval_values",  # each sample's share of inked pixels
}
#: The ``paired_bootstrap`` metric of each record metric that is not a share of examples right.
_BOOTSTRAP_METRIC = {"entity_f1": "entity_f1", "ink_share": "mean", "bleu": "bleu"}
#: The significance level of every "A beats B" verdict in the notebooks and the README.
SIGNIFICANCE = 0.05


def compare_records(
    records_a: Sequence[dict[str, Any]],
    records_b: Sequence[dict[str, Any]],
    *,
    samples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """``paired_bootstrap`` of two groups of sweep records (one per seed; the same evaluation
    examples), reading each record's per-example data (``PER_EXAMPLE_FIELDS``) for its metric.
    Raises, naming them, when records lack that data (runs from before it was recorded)."""
    records = [*records_a, *records_b]
    if not records_a or not records_b:
        raise ValueError("compare_records needs at least one record on each side")
    names = {rec.get("metric_name") for rec in records}
    if len(names) != 1 or next(iter(names)) not in PER_EXAMPLE_FIELDS:
        raise ValueError(
            f"compare_records needs records of one metric among {sorted(PER_EXAMPLE_FIELDS)}, "
            f"got {sorted(map(str, names))}"
        )
    metric = names.pop()
    field = PER_EXAMPLE_FIELDS[metric]
    lacking = [rec for rec in records if rec.get(field) is None]
    if lacking:
        described = ", ".join(f"{rec.get('method')} seed {rec.get('seed')}" for rec in lacking)
        raise ValueError(
            f"records without per-example data ({field}) cannot be paired: {described}; "
            "rerun them with this version of lora_edu"
        )
    return paired_bootstrap(
        [rec[field] for rec in records_a],
        [rec[field] for rec in records_b],
        metric=_BOOTSTRAP_METRIC.get(metric, "accuracy"),  # else a share of examples right
        samples=samples,
        seed=seed,
    )


def verdict(
    result: dict[str, Any], name_a: str, name_b: str, *, level: float = SIGNIFICANCE
) -> str:
    """A paired test's result (``paired_bootstrap``, ``compare_records``) in one plain sentence:
    which is better and by how many points, with the 95 % interval and the p-value, or that the
    examples cannot tell them apart at ``level``."""
    delta, low, high = (100 * result[k] for k in ("delta", "ci_low", "ci_high"))
    evidence = (
        f"{delta:+.1f} points, 95 % interval {low:+.1f} to {high:+.1f}, p = {result['p_value']:.2g}"
    )
    if result["p_value"] >= level:
        return f"{name_a} and {name_b}: no difference the examples can detect ({evidence})"
    better, worse = (name_a, name_b) if delta > 0 else (name_b, name_a)
    return f"{better} is better than {worse} ({name_a} − {name_b}: {evidence})"


def within_margin(result: dict[str, Any], margin: float, name_a: str, name_b: str) -> str:
    """Is A at most ``margin`` points below B? Read off a paired test's 95 % interval of A − B
    (``paired_bootstrap``, ``compare_records``): "yes" when the whole interval lies above
    −``margin``, "no" when it lies below, else "undecided" (the examples and seeds cannot tell);
    one plain sentence with the interval."""
    low, high = 100 * result["ci_low"], 100 * result["ci_high"]
    interval = f"95 % interval of {name_a} − {name_b}: {low:+.1f} to {high:+.1f} points"
    if low > -margin:
        return f"yes: {name_a} is at most {margin:g} points below {name_b} ({interval})"
    if high < -margin:
        return f"no: {name_a} is more than {margin:g} points below {name_b} ({interval})"
    return (
        f"undecided: a gap of {margin:g} points is inside the interval ({interval}); more seeds or "
        "examples would tell"
    )


def at_least(result: dict[str, Any], points: float, name_a: str, name_b: str) -> str:
    """Is A at least ``points`` above B? "yes" when the paired test's whole 95 % interval of A − B
    lies above ``points``, "no" when it lies below, else "undecided"; one plain sentence."""
    low, high = 100 * result["ci_low"], 100 * result["ci_high"]
    interval = f"95 % interval of {name_a} − {name_b}: {low:+.1f} to {high:+.1f} points"
    if low > points:
        return f"yes: {name_a} is more than {points:g} points above {name_b} ({interval})"
    if high < points:
        return f"no: {name_a} is less than {points:g} points above {name_b} ({interval})"
    return (
        f"undecided: {points:g} points is inside the interval ({interval}); more seeds or "
        "examples would tell"
    )

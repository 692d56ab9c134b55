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

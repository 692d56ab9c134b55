"""McNemar's exact test (lora_edu.stats)."""

import math

import numpy as np
import pytest

from lora_edu.stats import mcnemar


def test_mcnemar_counts_disagreements_and_gives_the_exact_binomial_p_value():
    a = "1111100000"
    b = "1000011000"
    result = mcnemar(a, b)
    assert (result["a_only"], result["b_only"], result["n"]) == (4, 2, 10)
    assert result["delta"] == pytest.approx(0.5 - 0.3)
    # 2 · P(X ≤ 2), X ~ Binomial(6, ½) = 2 · (1 + 6 + 15) / 64
    assert result["p_value"] == pytest.approx(2 * 22 / 64)
    assert mcnemar(b, a)["p_value"] == result["p_value"]  # symmetric
    assert mcnemar(a, a)["p_value"] == 1.0  # no disagreement, no evidence


def test_mcnemar_detects_a_real_difference_and_accepts_booleans():
    rng = np.random.default_rng(0)
    a = rng.random(1000) < 0.9
    b = a & (rng.random(1000) < 0.9)  # B breaks about 90 of A's right answers, fixes none
    result = mcnemar(a, b)
    assert result["b_only"] == 0 and result["a_only"] > 50
    assert result["p_value"] == pytest.approx(2 / 2 ** result["a_only"])
    assert result["p_value"] < 1e-10
    assert math.isclose(mcnemar(list(a), list(b))["p_value"], result["p_value"])


def test_mcnemar_refuses_mismatched_or_malformed_verdicts():
    with pytest.raises(ValueError, match="same examples"):
        mcnemar("101", "10")
    with pytest.raises(ValueError, match="0s and 1s"):
        mcnemar("10x", "101")

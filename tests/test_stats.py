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


def test_binomial_se_and_the_one_noise_figure():
    from lora_edu.stats import SST2_NOISE_POINTS, binomial_se

    assert binomial_se(0.5, 100) == pytest.approx(0.05)
    assert SST2_NOISE_POINTS == pytest.approx(100 * math.sqrt(0.85 * 0.15 / 872))
    assert 1.1 < SST2_NOISE_POINTS < 1.3
    with pytest.raises(ValueError, match="accuracy in"):
        binomial_se(1.5, 10)


def test_paired_bootstrap_over_seeds_separates_a_real_gap_from_none():
    from lora_edu.stats import paired_bootstrap

    rng = np.random.default_rng(0)
    hard = rng.random(872)
    better = [(hard < 0.88) ^ (rng.random(872) < 0.03) for _ in range(3)]
    worse = [(hard < 0.80) ^ (rng.random(872) < 0.03) for _ in range(3)]
    result = paired_bootstrap(better, worse, samples=500)
    expected = np.mean([b.mean() for b in better]) - np.mean([w.mean() for w in worse])
    assert result["delta"] == pytest.approx(expected)
    assert result["ci_low"] < result["delta"] < result["ci_high"] and result["ci_low"] > 0
    assert result["p_value"] == pytest.approx(2 / 501)  # no resample reverses the sign
    same = paired_bootstrap(better, better, samples=200)
    assert same["delta"] == 0 and same["p_value"] == 1.0
    # strings as stored in the records work too
    as_text = ["".join("1" if v else "0" for v in run) for run in better]
    assert paired_bootstrap(as_text, worse, samples=500)["delta"] == pytest.approx(expected)


def test_paired_bootstrap_entity_f1_is_the_micro_f1_difference():
    from lora_edu.stats import paired_bootstrap

    a = [[[1, 1, 1], [1, 2, 2], [0, 0, 1]]]  # 2 hits, 3 predicted, 4 true: F1 = 4/7
    b = [[[0, 1, 1], [1, 1, 2], [0, 1, 1]]]  # 1 hit, 3 predicted, 4 true: F1 = 2/7
    result = paired_bootstrap(a, b, metric="entity_f1", samples=300)
    assert result["delta"] == pytest.approx(4 / 7 - 2 / 7)
    with pytest.raises(ValueError, match="triple"):
        paired_bootstrap([[1, 2]], [[1, 2]], metric="entity_f1")
    with pytest.raises(ValueError, match="same examples"):
        paired_bootstrap(["0101"], ["010"])
    with pytest.raises(ValueError, match="metric must be"):
        paired_bootstrap(["01"], ["01"], metric="bleu")

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
        paired_bootstrap(["01"], ["01"], metric="chrf")


def test_resampling_the_runs_widens_the_interval_by_the_seed_spread():
    from lora_edu.stats import paired_bootstrap

    rng = np.random.default_rng(1)
    hard = rng.random(872)
    # seeds of A disagree a lot with each other: one is far better than the other two
    spread = [(hard < level) for level in (0.92, 0.82, 0.81)]
    steady = [(hard < 0.83) ^ (rng.random(872) < 0.01) for _ in range(3)]
    both = paired_bootstrap(spread, steady, samples=1000)
    examples_only = paired_bootstrap(spread, steady, samples=1000, resample_runs=False)
    assert both["delta"] == examples_only["delta"]
    width = both["ci_high"] - both["ci_low"]
    assert width > 2 * (examples_only["ci_high"] - examples_only["ci_low"])
    assert examples_only["p_value"] < 0.01 < both["p_value"]  # one lucky seed is not evidence
    # one run per side: nothing to resample, the same answer either way
    one = paired_bootstrap(spread[:1], steady[:1], samples=300)
    assert one == paired_bootstrap(spread[:1], steady[:1], samples=300, resample_runs=False)


def test_compare_records_reads_each_metrics_per_example_data_and_says_what_is_missing():
    from lora_edu.stats import compare_records, verdict

    def rec(method, seed, correct):
        return {"method": method, "seed": seed, "metric_name": "accuracy", "eval_correct": correct}

    a = [rec("lora", s, "1" * 90 + "0" * 10) for s in range(3)]
    b = [rec("head", s, "1" * 70 + "0" * 30) for s in range(3)]
    result = compare_records(a, b, samples=500)
    assert result["delta"] == pytest.approx(0.2) and result["runs_a"] == 3
    text = verdict(result, "LoRA", "the probe")
    assert text.startswith("LoRA is better than the probe (LoRA − the probe: +20.0 points")
    assert "no difference" in verdict(compare_records(a, a, samples=100), "LoRA", "LoRA")
    worse = verdict(compare_records(b, a, samples=500), "the probe", "LoRA")
    assert worse.startswith("LoRA is better than the probe (the probe − LoRA: -20.0")
    ner = [{"method": "full", "seed": 0, "metric_name": "entity_f1", "eval_entity_counts": None}]
    with pytest.raises(ValueError, match="one metric"):
        compare_records(a, ner)
    with pytest.raises(ValueError, match=r"eval_entity_counts\).*full seed 0"):
        compare_records(ner, ner)


def test_within_margin_reads_the_whole_interval():
    from lora_edu.stats import within_margin

    def res(low, high):
        return {"ci_low": low / 100, "ci_high": high / 100}

    assert within_margin(res(-1.5, 0.4), 2, "LoRA", "full").startswith("yes: LoRA is at most 2")
    assert within_margin(res(-4.0, -2.5), 2, "LoRA", "full").startswith("no: LoRA is more than 2")
    text = within_margin(res(-3.0, -0.5), 2, "LoRA", "full")
    assert text.startswith("undecided") and "-3.0 to -0.5 points" in text


def test_at_least_reads_the_whole_interval():
    from lora_edu.stats import at_least

    def res(low, high):
        return {"ci_low": low / 100, "ci_high": high / 100}

    assert at_least(res(3.5, 6.0), 3, "LoRA", "the probe").startswith("yes: LoRA is more than 3")
    assert at_least(res(0.5, 2.5), 3, "LoRA", "the probe").startswith("no: LoRA is less than 3")
    assert at_least(res(2.0, 4.0), 3, "LoRA", "the probe").startswith("undecided")

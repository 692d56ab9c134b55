"""The results API a learner reads: lora_edu.results(task) over the committed records."""

from __future__ import annotations

import pytest

import lora_edu as le
from lora_edu import experiments


def test_the_committed_sst2_results_read_through_a_few_names():
    res = le.results("sst2", profile="default")
    headline = res.headline()
    assert set(headline) == {"head", "bitfit", "lora", "lora-all-linear", "full"}
    assert all(len(row["seeds"]) == 3 for row in headline.values())
    # the same rows as the study's own aggregation of the committed file
    rows = experiments.every_seed(res.records("headline"), res.records("headline"))
    assert {experiments.pilot_arm(row): row["metric"] for row in rows} == {
        arm: row["metric"] for arm, row in headline.items()
    }
    test = res.compare("lora", "full")  # paired over the same sentences and seeds
    gap = headline["lora"]["metric"] - headline["full"]["metric"]
    assert test["delta"] == pytest.approx(gap) and "full fine-tuning" in test["verdict"]
    assert ("no difference" in test["verdict"]) == (test["p_value"] >= 0.05)
    assert res.chosen() == {arm: d.best for arm, d in res.pilot().items()}
    assert res.command("ranks") == "lora-edu sweep --task sst2 --preset ranks"
    assert res.file.name == "sst2-default.jsonl"
    assert res.name("head") == "the linear probe"


def test_a_comparison_that_does_not_exist_names_the_ones_that_do():
    res = le.results("vit", profile="default")
    with pytest.raises(ValueError, match=r"no paired test of 'full' against 'lora'.*'head'"):
        res.compare("full", "lora")


def test_reading_committed_results_leaves_the_session_profile_alone(monkeypatch):
    monkeypatch.setenv("LORA_EDU_PROFILE", "smoke")
    le.results("sst2", profile="default").headline()
    assert le.profile() == "smoke"
    with pytest.raises(ValueError, match="not a profile"):
        with le.config.at_profile("large"):
            pass
    assert le.profile() == "smoke"


def test_committed_results_read_without_any_dataset(monkeypatch, tmp_path):
    """A learner without the datasets still reads the committed default results: nothing is
    loaded while every run of the asked sweeps is in the file."""
    from lora_edu import data

    def no_data(*args, **kwargs):
        raise AssertionError("a dataset was loaded to read committed results")

    monkeypatch.setenv("LORA_EDU_PROFILE", "default")
    monkeypatch.delenv("LORA_EDU_RESULTS", raising=False)
    monkeypatch.setattr(data, "load_sst2", no_data)
    res = le.results("sst2")
    assert set(res.headline()) == {"head", "bitfit", "lora", "lora-all-linear", "full"}
    assert res.pilot()["lora"].best == experiments.lr_pilot_chosen("sst2")["lora"]

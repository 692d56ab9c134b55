"""The data-size study (``lora_edu.data_size``): one real run in smoke, the budget study's rate
procedure applied per training-set size, and the report reading it."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from lora_edu.budget import PILOT_SEEDS, THIRD_SEED, next_runs
from lora_edu.budget_report import budget_gaps, budget_table, markdown_table, study_plan
from lora_edu.data_size import STUDY_TASK, data_size_plan, run_data_size

N = 300


def _record(arm: str, lr: float, seed: int, accuracy_of_size) -> dict:
    rng = np.random.default_rng(zlib.crc32(repr((arm, lr, seed)).encode()))
    points = []
    for n in data_size_plan().sizes:
        point = {"n_train": n, "step": data_size_plan().steps_at(n)}
        for split in ("dev", "test"):
            right = rng.permutation(N) < round(accuracy_of_size(n) * N)
            point[f"{split}_metric"] = right.mean()
            point[f"{split}_correct"] = "".join("1" if r else "0" for r in right)
        points.append(point)
    return {"arm": arm, "lr": lr, "seed": seed, "method": "lora", "metric_name": "accuracy",
            "point_key": "n_train", "checkpoints": points}  # fmt: skip


def test_a_run_trains_and_scores_every_size_on_both_splits(monkeypatch):
    monkeypatch.setenv("LORA_EDU_PROFILE", "smoke")
    plan = data_size_plan()
    record = run_data_size(STUDY_TASK, "lora-qv", 2e-3, 0, progress=False)
    assert [p["n_train"] for p in record["checkpoints"]] == list(plan.sizes)
    assert [p["step"] for p in record["checkpoints"]] == [plan.steps_at(n) for n in plan.sizes]
    for point in record["checkpoints"]:
        for split in ("dev", "test"):
            n = record[f"n_{split}"]
            assert len(point[f"{split}_correct"]) == n
            assert point[f"{split}_metric"] == pytest.approx(
                point[f"{split}_correct"].count("1") / n
            )
    assert record["point_key"] == "n_train" and record["study"] == "data-size"
    with pytest.raises(ValueError, match="data-size study's task is 'sst2-data'"):
        run_data_size("sst2", "lora-qv", 2e-3, 0)


def test_the_rate_procedure_decides_per_size(monkeypatch):
    """A rate that wins only at the smallest size, at the grid's top, extends the grid upward;
    once the new rate loses, each size's winner gets its third seed."""
    monkeypatch.setenv("LORA_EDU_PROFILE", "default")
    plan = data_size_plan()
    arm = plan.arm("lora-qv")
    low, mid, high = arm.start_rates
    small = min(plan.sizes)

    def accuracy(lr):
        return lambda n: {low: 0.6, mid: 0.9, high: 0.95 if n == small else 0.7}.get(lr, 0.55)

    records = [
        _record(arm.name, lr, s, accuracy(lr)) for lr in arm.start_rates for s in PILOT_SEEDS
    ]
    todo = next_runs(STUDY_TASK, records, [arm.name], plan)
    assert [lr for _, lr, _ in todo] == [todo[0][1]] * 2 and todo[0][1] > high
    records += [_record(arm.name, todo[0][1], s, accuracy(None)) for s in PILOT_SEEDS]
    assert next_runs(STUDY_TASK, records, [arm.name], plan) == [
        (arm.name, mid, THIRD_SEED), (arm.name, high, THIRD_SEED)
    ]  # fmt: skip
    rows = budget_table(STUDY_TASK, records)
    best = {r["point"]: r for r in rows if r["chosen"] == "best"}
    assert best[small]["lr"] == high and best[4000]["lr"] == mid
    assert f"| lora-qv | n = {small:,} | {plan.steps_at(small)} |" in markdown_table(rows)


def test_the_report_pairs_two_arms_at_every_size(monkeypatch):
    monkeypatch.setenv("LORA_EDU_PROFILE", "default")
    plan = study_plan(STUDY_TASK)
    lora, full = plan.arm("lora-qv"), plan.arm("full")
    records = [_record("lora-qv", lr, s, lambda n, lr=lr: 0.85 if lr == lora.start_rates[1] else 0.6)
               for lr in lora.start_rates for s in PILOT_SEEDS]  # fmt: skip
    records += [_record("full", lr, s, (lambda n: 0.75 if n < 1000 else 0.85)
                        if lr == full.start_rates[1] else (lambda n: 0.6))
                for lr in full.start_rates for s in PILOT_SEEDS]  # fmt: skip
    gaps = {g["point"]: g for g in budget_gaps(STUDY_TASK, records, "lora-qv", "full", samples=300)}
    assert list(gaps) == list(plan.sizes)
    assert gaps[100]["verdict"] == "lora-qv" and gaps[100]["ci_low"] > 0
    assert gaps[4000]["verdict"] == "tie"

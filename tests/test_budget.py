"""The budget study (``lora_edu.budget``): the loop's constant schedule and checkpoints it relies
on, the rule that decides which runs it still needs, and one real run per task in smoke."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from lora_edu.budget import (
    BUDGET_MULTIPLES,
    PILOT_SEEDS,
    RATE_LADDER,
    THIRD_SEED,
    budget_plan,
    budget_view,
    next_runs,
    run_budget,
)
from lora_edu.training.loop import constant_schedule, fit


def test_constant_schedule_warms_up_then_holds():
    factors = [constant_schedule(s, warmup_steps=2, total_steps=10) for s in range(10)]
    assert factors == pytest.approx([1 / 3, 2 / 3] + [1.0] * 8)


def _toy():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    x, y = torch.randn(32, 3), torch.randint(0, 2, (32,))

    def collate(indices):
        return {"input": x[indices]}, y[indices]

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, input):
            return self.net(input)

    return Wrap(), collate


def test_fit_calls_checkpoints_in_eval_mode_with_a_constant_rate():
    model, collate = _toy()
    seen = []

    def checkpoint(net, step):
        seen.append((step, net.training, net.net.weight.detach().clone()))

    result = fit(model, 32, collate, None, epochs=1, lr=0.1, batch_size=4, seed=0,
                 device=torch.device("cpu"), progress=False, warmup_ratio=0.25,
                 schedule="constant", checkpoints=(0, 2, 8), on_checkpoint=checkpoint)  # fmt: skip
    assert [s for s, _, _ in seen] == [0, 2, 8] and not any(t for _, t, _ in seen)
    assert result["history"]["lr"] == pytest.approx([0.1 / 3, 0.2 / 3] + [0.1] * 6)
    assert model.training  # back in training mode after each checkpoint
    assert not torch.equal(seen[0][2], seen[1][2]) and torch.equal(seen[2][2], model.net.weight)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"schedule": "cosine"}, "unknown schedule 'cosine'"),
        ({"checkpoints": (9,), "on_checkpoint": print}, r"checkpoints \[9\] lie outside .*0\.\.8"),
        ({"checkpoints": (2,)}, "needs on_checkpoint"),
    ],
)
def test_fit_refuses_a_bad_schedule_or_checkpoint(kwargs, message):
    model, collate = _toy()
    with pytest.raises(ValueError, match=message):
        fit(model, 32, collate, None, epochs=1, lr=0.1, batch_size=4, seed=0,
            device=torch.device("cpu"), progress=False, **kwargs)  # fmt: skip


# --------------------------------------------------------------------------- which runs next

N = 400  # held-out examples of the synthetic records


def _record(arm, lr, seed, accuracy_by_multiple):
    """A study record whose held-out verdicts have the given accuracy at each budget (the
    examples right drawn at random, so two records of one accuracy still differ)."""
    rng = np.random.default_rng(zlib.crc32(repr((arm, lr, seed)).encode()))
    points = []
    for m in BUDGET_MULTIPLES:
        acc = accuracy_by_multiple(m) if callable(accuracy_by_multiple) else accuracy_by_multiple
        point = {"step": m, "multiple": m}
        for split in ("dev", "test"):
            right = rng.permutation(N) < round(acc * N)
            point[f"{split}_metric"] = right.mean()
            point[f"{split}_correct"] = "".join("1" if r else "0" for r in right)
        points.append(point)
    return {"arm": arm, "lr": lr, "seed": seed, "method": "lora", "metric_name": "accuracy",
            "checkpoints": points}  # fmt: skip


def _pilot(arm, accuracy_of_rate, rates):
    return [_record(arm, lr, s, accuracy_of_rate(lr)) for lr in rates for s in PILOT_SEEDS]


def test_next_runs_starts_with_every_start_rate_at_two_seeds(monkeypatch):
    monkeypatch.setenv("LORA_EDU_PROFILE", "default")
    arm = budget_plan("sst2").arms[0]
    todo = next_runs("sst2", [], [arm.name])
    assert todo == [(arm.name, lr, s) for s in PILOT_SEEDS for lr in arm.start_rates]


def test_next_runs_gives_the_clear_winner_its_third_seed_only(monkeypatch):
    monkeypatch.setenv("LORA_EDU_PROFILE", "default")
    arm = budget_plan("sst2").arms[0]
    low, mid, high = arm.start_rates
    accuracy = {low: 0.70, mid: 0.90, high: 0.72}
    records = _pilot(arm.name, accuracy.get, arm.start_rates)
    assert next_runs("sst2", records, [arm.name]) == [(arm.name, mid, THIRD_SEED)]
    records.append(_record(arm.name, mid, THIRD_SEED, 0.9))
    assert next_runs("sst2", records, [arm.name]) == []


def test_a_third_seed_does_not_move_the_choice_that_asked_for_it(monkeypatch):
    """The rate is chosen on the pilot seeds only, in ``next_runs`` and in the report alike: a
    poor third seed at the chosen rate asks for no other rate's third seed."""
    from lora_edu.budget_report import chosen_rates

    monkeypatch.setenv("LORA_EDU_PROFILE", "default")
    arm = budget_plan("sst2").arms[0]
    low, mid, high = arm.start_rates
    records = _pilot(arm.name, {low: 0.70, mid: 0.90, high: 0.72}.get, arm.start_rates)
    records.append(_record(arm.name, mid, THIRD_SEED, 0.3))  # mean over 3 seeds 0.70 < 0.72
    assert next_runs("sst2", records, [arm.name]) == []
    assert all(rates == [mid] for rates in chosen_rates("sst2", records, arm.name).values())


def test_next_runs_extends_the_grid_where_a_budget_prefers_its_edge(monkeypatch):
    monkeypatch.setenv("LORA_EDU_PROFILE", "default")
    arm = budget_plan("sst2").arms[0]
    low, mid, high = arm.start_rates
    above = RATE_LADDER[RATE_LADDER.index(high) + 1]

    def accuracy_of(lr):  # the middle rate wins at x1-x4, the highest one at x8
        return lambda m: {low: 0.7, mid: 0.9, high: 0.95 if m == 8 else 0.7}[lr]

    records = _pilot(arm.name, accuracy_of, arm.start_rates)
    assert next_runs("sst2", records, [arm.name]) == [(arm.name, above, s) for s in PILOT_SEEDS]
    records += _pilot(arm.name, lambda lr: 0.6, [above])
    # now every best is inside the grid: third seeds where a rate is chosen (mid, high)
    assert next_runs("sst2", records, [arm.name]) == [
        (arm.name, mid, THIRD_SEED), (arm.name, high, THIRD_SEED)
    ]  # fmt: skip


def test_next_runs_runs_both_rates_of_a_tie(monkeypatch):
    monkeypatch.setenv("LORA_EDU_PROFILE", "default")
    arm = budget_plan("sst2").arms[0]
    low, mid, high = arm.start_rates
    accuracy = {low: 0.60, mid: 0.850, high: 0.845}  # 0.5 points apart on 400 examples: a tie
    records = _pilot(arm.name, accuracy.get, arm.start_rates)
    assert next_runs("sst2", records, [arm.name]) == [
        (arm.name, mid, THIRD_SEED), (arm.name, high, THIRD_SEED)
    ]  # fmt: skip


def test_budget_view_reads_one_budget_and_refuses_a_missing_one():
    record = _record("lora-qv", 1e-3, 0, lambda m: 0.5 + m / 100)
    view = budget_view(record, 4)
    assert view["metric"] == pytest.approx(0.54) and len(view["eval_correct"]) == N
    record["checkpoints"] = record["checkpoints"][:2]
    with pytest.raises(ValueError, match="lora-qv lr 0.001 seed 0 has no result at multiple = 8"):
        budget_view(record, 8)


def test_an_unknown_task_or_arm_is_named():
    with pytest.raises(ValueError, match="covers sst2 and e2e, not 'mnist'"):
        budget_plan("mnist")
    with pytest.raises(ValueError, match="no arm 'qlora'; its arms: lora-qv, full"):
        next_runs("sst2", [], ["qlora"])


# --------------------------------------------------------------------------- real runs (smoke)


def test_an_sst2_run_scores_every_budget_on_both_splits(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_EDU_PROFILE", "smoke")
    plan = budget_plan("sst2")
    record = run_budget("sst2", "lora-qv", 2e-3, 0, progress=False)
    assert [p["step"] for p in record["checkpoints"]] == list(plan.steps)
    for point in record["checkpoints"]:
        for split, n in (("dev", record["n_dev"]), ("test", record["n_test"])):
            assert len(point[f"{split}_correct"]) == n
            assert point[f"{split}_metric"] == pytest.approx(
                point[f"{split}_correct"].count("1") / n
            )
    assert record["n_train"] == plan.steps[-1] * plan.batch_size and record["lr"] == 2e-3


def test_an_e2e_run_scores_bleu_and_the_old_task_before_and_after(monkeypatch):
    monkeypatch.setenv("LORA_EDU_PROFILE", "smoke")
    record = run_budget("e2e", "lora-qv", 5e-3, 0, progress=False)
    first, *rest = record["checkpoints"]
    assert first["step"] == 0 and "test_metric" not in first  # before training: the old task only
    assert [p["multiple"] for p in rest] == list(BUDGET_MULTIPLES)
    for point in rest:
        assert 0 <= point["test_metric"] <= 1 and 0 <= point["dev_metric"] <= 1
        for split in ("dev", "test"):
            n = record[f"n_{split}"]
            assert len(point[f"{split}_generations"]) == len(point[f"{split}_bleu_stats"]) == n
    assert all(np.isfinite(p["forget_loss"]) for p in record["checkpoints"])


def test_bleu_statistics_sum_to_corpus_bleu_and_pair_runs_over_seeds():
    from lora_edu.generate import bleu_statistics, corpus_bleu
    from lora_edu.stats import compare_records

    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(30)]
    refs = [[" ".join(rng.choice(words, 8))] for _ in range(60)]
    good = [r[0].replace(r[0].split()[3], "zz", 1) for r in refs]  # one word wrong
    bad = [" ".join(rng.permutation(r[0].split())) for r in refs]  # the words, shuffled
    stats = np.array(bleu_statistics(good, refs))
    from sacrebleu.metrics import BLEU

    assert BLEU()._compute_score_from_stats(stats.sum(0).tolist()).score == pytest.approx(
        corpus_bleu(good, refs)
    )
    runs = {name: {"metric_name": "bleu", "eval_bleu_stats": bleu_statistics(h, refs)}
            for name, h in (("good", good), ("bad", bad))}  # fmt: skip
    result = compare_records([runs["good"]] * 2, [runs["bad"]] * 2, samples=300)
    assert result["delta"] == pytest.approx(
        (corpus_bleu(good, refs) - corpus_bleu(bad, refs)) / 100
    )
    assert result["p_value"] < 0.01 and result["ci_low"] > 0


def test_the_report_shows_each_budget_at_its_chosen_rate_and_pairs_the_arms(monkeypatch):
    from lora_edu.budget_report import budget_gaps, budget_table, markdown_table

    monkeypatch.setenv("LORA_EDU_PROFILE", "default")
    plan = budget_plan("sst2")
    lora, full = plan.arm("lora-qv"), plan.arm("full")
    # LoRA's middle rate wins clearly and trails full fine-tuning by 10 points at x1, 0 at x8
    records = _pilot("lora-qv", lambda lr: (lambda m: 0.8 + 0.0125 * m) if lr == lora.start_rates[1]
                     else 0.6, lora.start_rates)  # fmt: skip
    records += _pilot("full", lambda lr: 0.9 if lr == full.start_rates[1] else 0.6,
                      full.start_rates)  # fmt: skip
    rows = budget_table("sst2", records)
    best = {(r["arm"], r["point"]): r for r in rows if r["chosen"] == "best"}
    assert best["lora-qv", 1]["lr"] == lora.start_rates[1] and best["full", 8]["seeds"] == 2
    assert best["lora-qv", 8]["test"] == pytest.approx(0.9, abs=0.01)
    assert "| lora-qv | ×1 | 250 |" in markdown_table(rows)
    gaps = {g["point"]: g for g in budget_gaps("sst2", records, "lora-qv", "full", samples=300)}
    assert gaps[1]["verdict"] == "full" and gaps[1]["ci_high"] < 0
    assert gaps[1]["delta"] == pytest.approx(-0.0875, abs=0.01)
    assert gaps[8]["verdict"] == "tie"


def test_the_report_shows_only_arms_whose_rates_are_decided(monkeypatch):
    from lora_edu.budget_report import arm_progress, budget_gaps, budget_table, decided_arms

    monkeypatch.setenv("LORA_EDU_PROFILE", "default")
    lora = budget_plan("sst2").arm("lora-qv")
    low, mid, high = lora.start_rates
    records = _pilot("lora-qv", {low: 0.7, mid: 0.9, high: 0.72}.get, lora.start_rates)
    half = [r for r in records if not (r["lr"] == high and r["seed"] == 1)]
    progress = arm_progress("sst2", half)
    assert progress["lora-qv"] == {"runs": 5, "planned": [(high, 1)], "stage": "pilot"}
    assert progress["full"]["stage"] == "not started" and progress["full"]["runs"] == 0
    assert decided_arms("sst2", half) == [] and budget_table("sst2", half) == []
    assert arm_progress("sst2", records)["lora-qv"]["stage"] == "third seeds"
    records.append(_record("lora-qv", mid, THIRD_SEED, 0.9))
    assert arm_progress("sst2", records)["lora-qv"]["stage"] == "complete"
    assert {r["arm"] for r in budget_table("sst2", records)} == {"lora-qv"}
    with pytest.raises(
        ValueError, match="the full arm of the sst2 study is at stage 'not started'"
    ):
        budget_gaps("sst2", records, "lora-qv", "full")


def test_records_of_one_profile_are_read_with_that_profiles_plan(monkeypatch, tmp_path):
    from lora_edu.budget_report import read_budget, study_plan
    from lora_edu.config import by_profile

    monkeypatch.setenv("LORA_EDU_PROFILE", "smoke")
    made = [dict(_record("lora-qv", 1e-3, 0, 0.8), profile="default")]
    assert study_plan("sst2", made).base_steps == 250  # the default set-up, in a smoke session
    assert study_plan("sst2").base_steps == 1 and study_plan("sst2-data").sizes == (16, 32)
    with pytest.raises(ValueError, match="mix profiles"):
        study_plan("sst2", [*made, dict(made[0], profile="smoke")])
    assert by_profile(smoke=1, default=2, active="default") == 2
    with pytest.raises(ValueError, match="unknown profile 'huge'"):
        by_profile(smoke=1, default=2, active="huge")
    monkeypatch.setenv("LORA_EDU_RESULTS", str(tmp_path))
    with pytest.raises(
        FileNotFoundError, match="budget/e2e-default.jsonl; run `lora-edu budget e2e`"
    ):
        read_budget("e2e", profile_name="default")


def test_one_study_object_answers_what_the_functions_answer(monkeypatch, tmp_path):
    from lora_edu.budget_report import budget_table, read_study
    from lora_edu.store import append_record

    monkeypatch.setenv("LORA_EDU_PROFILE", "default")
    monkeypatch.setenv("LORA_EDU_RESULTS", str(tmp_path))
    assert read_study("e2e", missing_ok=True).records == []
    with pytest.raises(FileNotFoundError, match="lora-edu budget e2e"):
        read_study("e2e")
    lora = budget_plan("sst2").arm("lora-qv")
    records = _pilot("lora-qv", {1e-3: 0.7, 2e-3: 0.9, 5e-3: 0.72}.get, lora.start_rates)
    path = tmp_path / "budget.jsonl"
    for record in records:
        append_record(path, {**record, "profile": "default"})
    study = read_study("sst2", path=path)
    assert study.plan.base_steps == 250 and study.decided() == ["lora-qv"]
    assert study.table() == budget_table("sst2", study.records)
    assert study.progress()["lora-qv"]["stage"] == "third seeds"
    assert all(rates == [2e-3] for rates in study.chosen("lora-qv").values())

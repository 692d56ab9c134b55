"""Named sweeps (presets), where results and kept adapters live, float16 adapters, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lora_edu import cli, experiments, sweep
from lora_edu.grid import run_key
from lora_edu.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, apply_lora, load_adapter, save_adapter


@pytest.fixture
def default_profile(monkeypatch, tmp_path):
    monkeypatch.setenv("LORA_EDU_PROFILE", "default")
    monkeypatch.setenv("LORA_EDU_RESULTS", str(tmp_path))
    return tmp_path


def test_presets_are_deduplicated_and_named(default_profile):
    former = experiments.preset_grid("sst2", "former-lr")
    assert [g["method"] for g in former].count("full") == 2  # two seeds in default
    assert {g["lr"] for g in former} == set(experiments.FORMER_LR.values())
    both = experiments.preset_grid("sst2", ["former-lr", "ranks"])
    keys = [sweep.run_key(g) for g in both]
    assert len(keys) == len(set(keys))
    # r=8 q,v α16 seed 0 is in both presets and appears once
    assert len(both) == len(former) + 7 - 1
    alphas = experiments.preset_grid("sst2", "alphas")
    assert {(g["r"], g["alpha"]) for g in alphas if g["r"] == 8} == {(8, 8.0), (8, 16.0)}
    assert {g["r"] for g in alphas} == set(experiments.ALPHA_RANKS)
    conll = experiments.preset_grid("conll2003", "ranks")
    assert [g["r"] for g in conll] == experiments.SWEEP_RANKS["conll2003"]


def test_table5_budgets_are_equal_on_minilm_shapes():
    """Each target set's rank spends q,v r=8's budget: 2·r·384 per adapted 384×384 matrix."""
    per_matrix = 2 * 384  # A (r, 384) + B (384, r) per unit of rank
    budgets = {
        targets: r * per_matrix * len(targets) * 6
        for r, targets in experiments.TABLE5_TARGETS
        if targets != ("all-linear",)
    }
    assert set(budgets.values()) == {73_728}


def test_unknown_presets_raise_with_the_choices():
    with pytest.raises(ValueError, match="expected one of"):
        experiments.preset_grid("mnist", "headline")
    with pytest.raises(ValueError, match="headline, former-lr, ranks"):
        experiments.preset_grid("vit", ["headline", "alphas"])


def test_results_file_per_profile(monkeypatch, default_profile):
    assert experiments.results_file("sst2") == default_profile / "results" / "sst2-default.jsonl"
    monkeypatch.setenv("LORA_EDU_PROFILE", "smoke")
    smoke = experiments.results_file("sst2")
    assert smoke.name == "sst2-smoke.jsonl" and default_profile not in smoke.parents
    assert experiments.results_file("vit").parent == smoke.parent  # one temp folder per process


def test_the_variant_comparison_has_its_own_files_and_takes_each_pilot_winner(default_profile):
    variants = experiments.results_file("sst2", "variants")
    assert variants == default_profile / "results" / "variants-default.jsonl"
    pilot_file = experiments.results_file("sst2-dev", "variants-pilot")
    assert pilot_file.name == "sst2-dev-default.jsonl"  # with the learning-rate pilot
    with pytest.raises(ValueError, match="different files"):
        experiments.results_file("sst2", ["headline", "variants"])
    pilot = experiments.preset_grid("sst2-dev", "variants-pilot")
    names = {experiments.variant_name(run) for run in pilot}
    assert names == set(experiments.VARIANT_RUNS)
    assert len(pilot) == sum(map(len, experiments.VARIANT_PILOT_LRS.values()))  # every rate
    with pytest.raises(ValueError, match="pilot is incomplete.*lora-edu sweep --task sst2-dev"):
        experiments.preset_grid("sst2", "variants")
    # a fake pilot: the middle rate wins everywhere except for DoRA, where two rates tie
    records = []
    for run in pilot:
        name, rates = experiments.variant_name(run), experiments.VARIANT_PILOT_LRS
        metric = 0.9 if run["lr"] == rates[experiments.variant_name(run)][1] else 0.8
        if name == "dora" and run["lr"] == rates["dora"][2]:
            metric = 0.9  # a tie goes to the lower rate
        records.append({**run, "task": "sst2-dev", "metric": metric})
    # the learning-rate pilot's LoRA on every linear layer shares the file, the rates and seed 0
    # with plain LoRA: it must not count as plain LoRA (it would win at the lowest rate)
    records += [{**run, "task": "sst2-dev", "metric": 1.0}
                for run in experiments.arm_runs("sst2", "lora-all-linear", 5e-4)]  # fmt: skip
    pilot_file.parent.mkdir(parents=True, exist_ok=True)
    pilot_file.write_text("".join(json.dumps(r) + "\n" for r in records))
    chosen = experiments.variants_chosen_lrs()
    assert chosen == {k: v[1] for k, v in experiments.VARIANT_PILOT_LRS.items()}
    grid = experiments.preset_grid("sst2", "variants")
    assert len(grid) == 2 * len(experiments.VARIANT_RUNS)  # two seeds each
    assert {(experiments.variant_name(g), g["lr"]) for g in grid} == set(chosen.items())


def test_select_and_memory():
    recs = [
        {"method": "lora", "r": 8, "target_modules": ["query", "value"]},
        {"method": "lora", "r": 8, "target_modules": ["query"]},
        {"method": "full", "r": None, "target_modules": None},
    ]
    assert experiments.select(recs, method="lora", target_modules=("query", "value")) == recs[:1]
    assert experiments.select(recs, r=8) == recs[:2]
    mb = experiments.training_memory_mb({"total_params": 2**20, "trainable_params": 2**18})
    assert mb == pytest.approx(4 * (1 + 3 / 4))


def test_sweep_command_round_trips_through_the_cli(monkeypatch, default_profile):
    command = experiments.sweep_command("conll2003", ["former-lr", "ranks"])
    seen = {}

    def fake_run_sweep(task, grid, out, **kwargs):
        seen.update(task=task, grid=grid, out=out)
        return []

    monkeypatch.setattr(sweep, "run_sweep", fake_run_sweep)
    assert cli.main(command.split()[1:]) == 0
    assert seen["task"] == "conll2003"
    assert seen["grid"] == experiments.preset_grid("conll2003", ["former-lr", "ranks"])
    assert str(seen["out"]).endswith("conll2003-default.jsonl")


def test_cli_alphas_relative_to_rank(monkeypatch, default_profile):
    seen = {}
    monkeypatch.setattr(
        sweep, "run_sweep", lambda task, grid, out, **kw: seen.update(grid=grid) or []
    )
    argv = "sweep --task sst2 --methods lora,head --ranks 2,8 --alphas r,2r,16 --seeds 0,1"
    assert cli.main(argv.split()) == 0
    lora = {(g["r"], g["alpha"], g["seed"]) for g in seen["grid"] if g["method"] == "lora"}
    assert lora == {(r, a, s) for r in (2, 8) for a in (r, 2 * r, 16) for s in (0, 1)}
    assert sum(g["method"] == "head" for g in seen["grid"]) == 2  # once per seed, not per alpha
    with pytest.raises(SystemExit):
        cli.main("sweep --task sst2 --alphas xr".split())


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def test_float16_adapters_round_trip(tmp_path):
    model = _tiny()
    apply_lora(model, ["0", "2"], r=2, alpha=4)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:  # the base stays the pretrained one
                p.add_(0.1 * torch.randn_like(p))
    save_adapter(model, tmp_path / "fp32")
    experiments.to_float16(tmp_path / "fp32", tmp_path / "fp16", {"metric": 0.5, "history": {}})
    assert experiments.kept_run_record(tmp_path / "fp16") == {"metric": 0.5}
    save_adapter(model, tmp_path / "direct", dtype=torch.float16)
    from safetensors.torch import load_file

    half = load_file(tmp_path / "fp16" / ADAPTER_WEIGHTS)
    assert all(t.dtype == torch.float16 for t in half.values())
    direct = load_file(tmp_path / "direct" / ADAPTER_WEIGHTS)
    assert half.keys() == direct.keys() and all(torch.equal(half[k], direct[k]) for k in half)
    assert json.loads((tmp_path / "fp16" / ADAPTER_CONFIG).read_text())["r"] == 2
    # Loading casts back to the model's float32; outputs agree to float16 precision.
    fresh = _tiny()
    load_adapter(fresh, tmp_path / "fp16")
    assert all(p.dtype == torch.float32 for p in fresh.parameters())
    x = torch.randn(4, 6)
    assert torch.allclose(fresh(x), model(x), atol=1e-3)
    assert not torch.equal(fresh(x), model(x))  # float16 did round something


def test_kept_adapters_reject_non_lora_runs(default_profile):
    with pytest.raises(ValueError, match="only LoRA runs"):
        experiments.kept_adapters("sst2", sweep.make_grid(["full"]))


def test_kept_adapter_dir_layout(default_profile):
    run = experiments.preset_grid("sst2", "paper-adapters")[0]
    path = experiments.kept_adapter_dir("sst2", run)
    assert (
        path == default_profile / "adapters" / "sst2-default" / "lora_r4_a16_query-value_lr0.002_s0"
    )


def _result(method, seed, metric, r=None, task="sst2", lr=None, alpha=16.0):
    from lora_edu.defaults import FORMER_LR

    lora = method == "lora"
    return {"task": task, "method": method, "r": r, "alpha": alpha if lora else None,
            "target_modules": ["query", "value"] if lora else None,
            "init": "kaiming" if lora else None, "use_rslora": False if lora else None,
            "seed": seed, "n_train": 4000, "epochs": 2, "lr": lr or FORMER_LR[method],
            "metric_name": "accuracy", "metric": metric, "trainable_params": 10,
            "total_params": 1000, "train_seconds": 1.0, "profile": "default"}  # fmt: skip


def test_study_report_one_small_table_per_study_baselines_first(monkeypatch):
    """Each study gets its own table at the records' profile (here default, though the session
    runs smoke), baselines before LoRA, once all its runs are there; a configuration shows all
    its seeds in every table it belongs to; a run outside every study is listed at the end."""
    monkeypatch.setenv("LORA_EDU_PROFILE", "smoke")
    records = [
        _result("lora", 0, 0.80, r=8),
        _result("full", 0, 0.86),
        _result("lora", 1, 0.84, r=8),
        _result("head", 0, 0.70),
        *(_result(m, s, 0.75) for m, s in (("head", 1), ("bitfit", 0), ("bitfit", 1), ("full", 1))),
        _result("lora", 0, 0.81, r=2),  # the default rank sweep, not the headline
        *(_result("lora", 0, 0.8, r=r) for r in (1, 4, 16, 32, 64)),
        _result("lora", 0, 0.50, r=3),  # in no study
        _result("lora", 0, 0.79, r=1, alpha=1.0),  # one run of the alpha study: not shown yet
    ]
    from lora_edu.study_report import study_report

    report = study_report(records)
    assert "the scale α" not in report and "| 1 | 1 |" not in report  # an unfinished study
    assert "**SST-2 sentiment" not in report  # the headline waits for its pilot
    headline = report.split("**SST-2 before the pilot")[1].split("**SST-2: LoRA's rank")[0]
    rows = [
        line for line in headline.splitlines() if line.startswith("| ") and "method" not in line
    ]
    assert [row.split(" | ")[0] for row in rows] == ["| head", "| bitfit", "| full", "| lora"]
    assert "| 8 |" in rows[3] and "82.00 ± 2.00 | 2 |" in rows[3]
    assert "4,000 training examples × 2 epochs" in headline and "train s" not in report
    ranks = report.split("**SST-2: LoRA's rank")[1].split("\n\n**")[0]
    assert (
        "| lora | 2 | 1.000 | 81.00 | 1 |" in ranks
        and "| lora | 8 | 1.000 | 82.00 ± 2.00 | 2 |" in ranks
    )
    assert "| head |" not in ranks
    other = report.split("**Other runs**")[1]
    assert "| sst2 | lora | 3 |" in other and "| 8 |" not in other


def test_a_pilot_is_one_row_per_method_with_the_chosen_rate_in_bold():
    from lora_edu.study_report import _pilot_table

    def row(variant, lr, metric):
        return {"method": "lora", "variant": variant, "r": 8, "lr": lr, "metric": metric,
                "metric_name": "accuracy", "init": "kaiming", "use_rslora": False,
                "quantize": None}  # fmt: skip

    table = _pilot_table([row(None, 1e-3, 0.8), row(None, 2e-3, 0.9), row(None, 5e-3, 0.9),
                          row("dora", 1e-3, 0.7)])  # fmt: skip
    lines = table.splitlines()
    assert lines[2] == "| method | r | lr 0.001 | lr 0.002 | lr 0.005 |"
    assert lines[4] == "| lora | 8 | 80.0 | **90.0** | 90.0 |"  # a tie goes to the lower rate
    assert lines[5] == "| dora | 8 | **70.0** |  |  |"


def test_the_learning_rate_pilot_spans_every_method_and_task(default_profile):
    for task, arms in experiments.LR_PILOT_LRS.items():
        grid = experiments.preset_grid(f"{task}-dev", "lr-pilot")
        seeds = experiments.pilot_seeds(task)
        assert len(grid) == len(seeds) * sum(map(len, arms.values()))
        assert sorted({run["seed"] for run in grid}) == list(seeds)
        assert {experiments.pilot_arm(run) for run in grid} == set(arms)
        for arm, rates in arms.items():  # three or more rates spanning the former choice
            former = experiments.FORMER_LR["lora" if arm.startswith("lora") else arm]
            assert (
                len(rates) >= 3 and min(rates) <= former <= max(rates) or arm == "lora-all-linear"
            )
        assert (
            experiments.results_file(f"{task}-dev", "lr-pilot").name == f"{task}-dev-default.jsonl"
        )


def test_the_localisation_pilot_adds_loras_missing_pieces_as_arms_of_their_own(default_profile):
    # full fine-tuning also trains the resized position embedding and the MLPs: an arm each
    grid = experiments.preset_grid("detection-dev", "lr-pilot")
    by_arm = {}
    for run in grid:
        by_arm.setdefault(experiments.pilot_arm(run), []).append(run)
    assert set(by_arm) == {"lora", "lora-pos", "lora-mlp", "full", "head"}
    attention = list(experiments.VIT_ATTENTION)
    assert all(r["target_modules"] == attention and "also_train" not in r for r in by_arm["lora"])
    assert all(r["target_modules"] == attention for r in by_arm["lora-pos"])
    assert all(r["also_train"] == ["position_embedding"] for r in by_arm["lora-pos"])
    assert all(r["target_modules"] == [*attention, "fc1", "fc2"] for r in by_arm["lora-mlp"])
    # one run key each: the position embedding's run is not plain LoRA's at the same rate
    assert len({run_key(r) for r in grid}) == len(grid)
    assert experiments.arm_name("detection", "lora-pos") == "LoRA r=8 + position embeddings"


def test_a_record_matches_a_grid_entry_on_every_identifying_field():
    # the budget (n_train, epochs), seed, task and rate are matched apart; every other field of
    # a run's key must be compared, or a LoRA run would pass for LoRA + position embeddings
    from lora_edu.grid import KEY_FIELDS

    apart = {"task", "seed", "n_train", "epochs", "lr"}
    assert set(experiments._MATCH_FIELDS) == set(KEY_FIELDS) - apart


def test_lr_pilot_chosen_takes_each_winner_and_names_a_missing_pilot(default_profile):
    with pytest.raises(ValueError, match="pilot is incomplete.*--task vit-dev"):
        experiments.lr_pilot_chosen("vit")
    grid = experiments.preset_grid("vit-dev", "lr-pilot")
    rates = experiments.LR_PILOT_LRS["vit"]
    records = []
    for run in grid:
        arm = experiments.pilot_arm(run)
        metric = 0.9 if run["lr"] == rates[arm][-1] else 0.8  # the top rate wins ...
        if arm == "head" and run["lr"] == rates["head"][0]:
            metric = 0.9  # ... except a tie for the head, which goes to the lower rate
        records.append({**run, "task": "vit-dev", "metric": metric})
    path = experiments.results_file("vit-dev", "lr-pilot")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert experiments.lr_pilot_chosen("vit") == {
        "lora": rates["lora"][-1], "full": rates["full"][-1], "head": rates["head"][0],
        "bitfit": rates["bitfit"][-1],
    }  # fmt: skip


def test_the_finetune_defaults_are_the_committed_pilots_choices(monkeypatch):
    """Each kind of task's default rates are its pilot's winners on the committed results, its
    epochs the headline's budget and its LoRA targets those of the headline's LoRA arm."""
    from lora_edu.defaults import PILOT_TASK, TASK_DEFAULTS

    monkeypatch.setenv("LORA_EDU_PROFILE", "default")
    monkeypatch.delenv("LORA_EDU_RESULTS", raising=False)  # the repository's data/results
    for kind, task in PILOT_TASK.items():
        defaults, chosen = TASK_DEFAULTS[kind], experiments.lr_pilot_chosen(task)
        all_linear = defaults.target_modules == "all-linear"
        lora_arm = "lora-all-linear" if all_linear else "lora"
        assert lora_arm in experiments.headline_arms(task), kind
        piloted = {"lora": chosen[lora_arm], **{m: chosen[m] for m in ("head", "bitfit", "full")}}
        for method in defaults.stepped_down:  # the winner collapsed on the sparse set
            grid = experiments.LR_PILOT_LRS[task][method]
            piloted[method] = max(lr for lr in grid if lr < chosen[method])
            check = sweep.read_results(
                experiments.results_file("conll2003-sparse", "defaults-check")
            )
            at = {rec["lr"]: rec for rec in check if rec["method"] == method}
            assert at[chosen[method]].get("collapsed") and not at[piloted[method]].get("collapsed")
        assert defaults.lr == piloted, kind
        assert (
            all_linear
            or tuple(defaults.target_modules) == (experiments.HEADLINE_LORA_TARGETS[task])
        )
        assert defaults.epochs == sweep.task_spec(task).budget()["epochs"], kind


def test_every_pilot_best_is_inside_its_grid_and_every_default_is_the_best(monkeypatch):
    """From the committed pilots: no arm's best rate sits at an end of its grid (a best at an end
    is not an optimum: the grid is extended first), every arm scored all its rates on one set of
    held-out examples, and every rate the package uses by default is its pilot's best (the token
    BitFit rate, one step below a best that collapsed on the sparse set, is tied with it by a
    paired test instead)."""
    from lora_edu.defaults import PILOT_TASK, TASK_DEFAULTS

    monkeypatch.setenv("LORA_EDU_PROFILE", "default")
    monkeypatch.delenv("LORA_EDU_RESULTS", raising=False)
    committed = [
        task
        for task in experiments.LR_PILOT_LRS
        if experiments.results_file(f"{task}-dev", "lr-pilot").is_file()
    ]
    # the captioner's pilot is registered and still running: take it out of this list once its
    # records are committed
    assert set(experiments.LR_PILOT_LRS) - set(committed) == {"caption"}
    for task in committed:
        for arm, decision in experiments.pilot_decisions(task).items():
            assert not decision.at_edge, f"{task} {arm}: best {decision.best:g} at the grid's edge"
            assert decision.n_eval, f"{task} {arm}: no evaluation size"
    for kind, task in PILOT_TASK.items():
        decisions, defaults = experiments.pilot_decisions(task), TASK_DEFAULTS[kind]
        lora_arm = "lora-all-linear" if defaults.target_modules == "all-linear" else "lora"
        for method, lr in defaults.lr.items():
            decision = decisions[lora_arm if method == "lora" else method]
            if method in defaults.stepped_down:  # one step below a best that collapsed: tied
                assert lr in decision.tied and lr < decision.best, (kind, method, lr)
            else:
                assert lr == decision.best, (kind, method, lr, decision.describe())


def test_a_pilot_decision_reports_ties_edges_and_refuses_unequal_evaluation_sets():
    from lora_edu.pilots import decide_arm, describe

    def rec(lr, seed, correct):
        return {"lr": lr, "seed": seed, "metric": correct.count("1") / len(correct),
                "metric_name": "accuracy", "eval_correct": correct}  # fmt: skip

    good, near, bad = "1" * 90 + "0" * 10, "1" * 89 + "0" * 11, "1" * 50 + "0" * 50
    records = [rec(1e-3, s, good) for s in (0, 1)] + [rec(2e-3, s, near) for s in (0, 1)]
    records += [rec(5e-3, s, bad) for s in (0, 1)]
    decision = decide_arm("lora", [1e-3, 2e-3, 5e-3], records)
    assert decision.best == 1e-3 and decision.at_edge
    assert decision.tied == (2e-3,) and decision.p_values[5e-3] < 0.05
    assert decision.seeds == {1e-3: 2, 2e-3: 2, 5e-3: 2} and decision.n_eval == 100
    assert "tied with it: 0.002 (89.0" in describe(decision) and "extend the grid" in describe(
        decision
    )
    with pytest.raises(ValueError, match="no run at 0.01"):
        decide_arm("lora", [1e-3, 1e-2], records)
    with pytest.raises(ValueError, match=r"different numbers of examples \[50, 100\]"):
        decide_arm("lora", [1e-3, 2e-3], records[:2] + [rec(2e-3, 0, good[:50])])


def test_the_detector_defaults_are_the_detection_pilots_choices(monkeypatch):
    from lora_edu.defaults import DETECTION_LR

    monkeypatch.setenv("LORA_EDU_PROFILE", "default")
    monkeypatch.delenv("LORA_EDU_RESULTS", raising=False)  # the repository's data/results
    chosen = experiments.lr_pilot_chosen("detection")
    assert {arm: chosen[arm] for arm in DETECTION_LR} == DETECTION_LR  # the methods' defaults


def test_lr_pilot_falls_back_to_the_former_rates_in_smoke(monkeypatch):
    monkeypatch.setenv("LORA_EDU_PROFILE", "smoke")
    chosen = experiments.lr_pilot_chosen("conll2003")
    assert chosen["lora"] == experiments.FORMER_LR["lora"]
    assert chosen["head"] == experiments.FORMER_LR["head"]


def test_dev_tasks_hold_out_training_examples(monkeypatch):
    monkeypatch.setenv("LORA_EDU_PROFILE", "default")
    train, dev = sweep.task_spec("vit-dev").load()
    assert len(dev) == sweep.DEV_SIZE["vit"]["default"] and len(train) + len(dev) == 1438
    _, reported = sweep.task_spec("vit").load()
    as_bytes = lambda ds: {bytes(memoryview(__import__("numpy").asarray(x))) for x in ds["image"]}  # noqa: E731
    assert not as_bytes(dev) & as_bytes(reported)  # the pilot never sees the reported images
    assert not as_bytes(dev) & as_bytes(train)


def _fake_pilot(task: str, winner: int = 1) -> dict[str, float]:
    """Pilot records of ``task`` in which each arm's rate number ``winner`` wins."""
    rates = experiments.LR_PILOT_LRS[task]
    records = [
        {**run, "task": f"{task}-dev",
         "metric": 0.9 if run["lr"] == rates[experiments.pilot_arm(run)][winner] else 0.8}
        for run in experiments.preset_grid(f"{task}-dev", "lr-pilot")
    ]  # fmt: skip
    path = experiments.results_file(f"{task}-dev", "lr-pilot")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return {arm: lrs[winner] for arm, lrs in rates.items()}


def test_the_headline_runs_every_arm_at_its_pilot_rate_three_seeds_seed_by_seed(default_profile):
    with pytest.raises(ValueError, match="pilot is incomplete.*--task sst2-dev"):
        experiments.preset_grid("sst2", "headline")
    chosen = _fake_pilot("sst2")
    grid = experiments.preset_grid("sst2", "headline")
    arms = list(experiments.LR_PILOT_LRS["sst2"])
    assert len(grid) == len(arms) * len(experiments.HEADLINE_SEEDS)
    assert [run["seed"] for run in grid] == sorted(run["seed"] for run in grid)  # seed-major
    assert all(run["lr"] == chosen[experiments.pilot_arm(run)] for run in grid)
    lora = [run for run in grid if run["method"] == "lora"]
    assert {(r["r"], r["alpha"], tuple(r["target_modules"])) for r in lora} == {
        (8, 16.0, experiments.QV),
        (8, 16.0, ("all-linear",)),  # SST-2's headline has LoRA on every linear layer too
    }


def test_headline_comparisons_pair_lora_with_every_other_arm(default_profile):
    _fake_pilot("vit", winner=0)
    grid = experiments.preset_grid("vit", "headline")
    quality = {"lora": 0.9, "full": 0.9, "head": 0.6, "bitfit": 0.88}
    records = []
    for i, run in enumerate(grid):
        arm = experiments.pilot_arm(run)
        correct = "".join(
            "1" if (j * 7 + i) % 100 < 100 * quality[arm] else "0" for j in range(400)
        )
        records.append({**run, "task": "vit", "metric_name": "accuracy", "eval_correct": correct,
                        "metric": correct.count("1") / 400})  # fmt: skip
    rows = experiments.headline_comparisons(records, "vit", samples=300)
    assert [(row["a"], row["b"]) for row in rows] == [
        ("lora", "full"), ("lora", "head"), ("lora", "bitfit")
    ]  # fmt: skip
    assert rows[0]["verdict"].startswith("LoRA r=8 and full fine-tuning: no difference")
    assert rows[1]["verdict"].startswith("LoRA r=8 is better than the linear probe")
    assert rows[1]["runs_a"] == 3 and rows[1]["p_value"] < 0.05
    # a missing seed leaves that arm out rather than comparing unequal groups
    partial = experiments.headline_comparisons(records[:-1], "vit", samples=100)
    assert {(row["a"], row["b"]) for row in partial} < {(row["a"], row["b"]) for row in rows}


def test_conll_reports_the_better_lora_arm_of_its_pilot(default_profile):
    assert experiments.headline_arms("sst2") == tuple(experiments.LR_PILOT_LRS["sst2"])
    arms = experiments.headline_arms("conll2003")
    assert "lora-all-linear" in arms and "lora" not in arms
    assert set(arms) < set(experiments.LR_PILOT_LRS["conll2003"])


def test_a_style_headline_draws_the_base_model_then_lora_and_full_fine_tuning(monkeypatch):
    """The style tasks compare the base denoiser (scored once) with LoRA on the denoiser's
    targets and full fine-tuning, each at its pilot rate; their pilots are the ``-dev`` twins."""
    from lora_edu.styles import DENOISER_TARGETS, STYLES

    monkeypatch.setenv("LORA_EDU_PROFILE", "smoke")
    for style in STYLES:
        grid = experiments.preset_grid(f"style-{style}", "headline")
        assert [run["method"] for run in grid] == ["none", "lora", "full"]
        assert grid[1]["target_modules"] == list(DENOISER_TARGETS) and grid[1]["r"] == 8
        pilot = experiments.preset_grid(f"style-{style}-dev", "lr-pilot")
        assert {run["method"] for run in pilot} == {"lora", "full"}


def test_the_matching_task_learns_the_vit_tasks_shifted_digits(monkeypatch):
    """Matching trains on the 8×8 digits of the ViT task (on MNIST itself LoRA and full
    fine-tuning matched every held-out image), its pilot on held-out training images."""
    monkeypatch.setenv("LORA_EDU_PROFILE", "default")
    train, test = sweep.task_spec("matching").load()
    vit_train, vit_test = sweep.task_spec("vit").load()
    assert len(train) == len(vit_train) and len(test) == len(vit_test)
    assert np.asarray(train[0]["image"]).shape == (8, 8)
    dev_train, dev = sweep.task_spec("matching-dev").load()
    assert len(dev) == sweep.DEV_SIZE["vit"]["default"] and len(dev_train) + len(dev) == len(train)


def test_kept_adapters_name_every_key_field_and_refuse_another_runs_folder(default_profile):
    """Kept adapters of runs that differ only in their rate or rsLoRA live in different
    folders; a folder whose recorded run is another one (an older naming, a hand copy) is
    refused, naming the field that differs, instead of being returned as this run's."""
    from lora_edu.experiments import RUN_RECORD

    low, high = sweep.make_grid(lr=1e-4)[0], sweep.make_grid(lr=1e-3)[0]
    rslora = sweep.make_grid(lr=1e-4, use_rslora=True)[0]
    dirs = {experiments.kept_adapter_dir("sst2", run) for run in (low, high, rslora)}
    assert len(dirs) == 3
    path = experiments.kept_adapter_dir("sst2", low)
    path.mkdir(parents=True)
    (path / "adapter_model.safetensors").write_bytes(b"")
    (path / RUN_RECORD).write_text(json.dumps({**high, "task": "sst2", "n_train": 4000}))
    with pytest.raises(ValueError, match=r"another run \(lr: kept 0.001, wanted 0.0001\)"):
        experiments.kept_adapters("sst2", [low], progress=False)
    (path / RUN_RECORD).write_text(json.dumps({**low, "task": "sst2", "n_train": 4000}))
    assert experiments.kept_adapters("sst2", [low], progress=False) == [path]


def test_every_committed_adapter_sits_in_its_runs_folder(monkeypatch):
    """Each committed adapter's folder is the one its recorded run names."""
    monkeypatch.setenv("LORA_EDU_PROFILE", "default")
    root = Path(__file__).resolve().parents[1] / "data" / "adapters"
    folders = sorted(p.parent for p in root.rglob("run.json"))
    assert folders
    for folder in folders:
        record = experiments.kept_run_record(folder)
        assert experiments.kept_adapter_dir(record["task"], record).name == folder.name
        assert folder.parent.name == f"{record['task']}-{record['profile']}"


def test_the_e2e_pilot_is_known_to_have_scored_its_rates_on_unequal_sets(monkeypatch):
    """A known defect the E2E pilot's rerun must remove: its first six rates' losses came from
    500 validation pairs, the four added later from 200. Once rerun on one set, this test fails
    and ``e2e_chosen_lrs`` must go back to ``equal_eval=True``."""
    from lora_edu.pilots import decide_arm

    monkeypatch.setenv("LORA_EDU_PROFILE", "default")
    monkeypatch.delenv("LORA_EDU_RESULTS", raising=False)
    records = sweep.read_results(experiments.results_file("e2e-dev", "lr-pilot"))
    lora = [rec for rec in records if rec["method"] == "lora"]
    assert sorted({rec["n_eval"] for rec in records}) == [200, 500]
    with pytest.raises(ValueError, match="different numbers of examples"):
        decide_arm("lora", sorted({rec["lr"] for rec in lora}), lora)


def test_the_head_rate_pilot_tries_the_heads_own_rates_beside_lora_and_full(default_profile):
    chosen = _fake_pilot("sst2")
    grid = experiments.preset_grid("sst2-dev", "head-rate-pilot")
    seen = {(experiments.pilot_arm(run), run.get("head_lr")) for run in grid}
    assert seen == {(arm, h) for arm in ("lora", "full") for h in (None, *experiments.HEAD_RATES)}
    assert all(run["lr"] == chosen[experiments.pilot_arm(run)] for run in grid)
    assert sorted({run["seed"] for run in grid}) == [0, 1]
    with pytest.raises(ValueError, match="head-rate pilot is incomplete.*--preset head-rate-pilot"):
        experiments.head_rate_decisions("sst2")
    # beside LoRA the head does best at its own 3e-2; beside full fine-tuning at the method's rate
    path = experiments.results_file("sst2-dev", "head-rate-pilot")
    extra = [
        {**run, "task": "sst2-dev",
         "metric": 0.95 if (run["method"], run["head_lr"]) == ("lora", 3e-2) else 0.85}
        for run in grid if run.get("head_lr") is not None
    ]  # fmt: skip
    with path.open("a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in extra))
    decisions = experiments.head_rate_decisions("sst2")
    assert decisions["lora"].best == 3e-2 and decisions["full"].best == chosen["full"]
    assert decisions["lora"].grid == tuple(sorted({chosen["lora"], *experiments.HEAD_RATES}))

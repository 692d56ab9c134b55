"""The paper-figure analyses on synthetic adapters and records (no model is loaded here)."""

from __future__ import annotations

import numpy as np
import pytest

from lora_edu import figures
from lora_edu.experiments import TABLE5_TARGETS
from lora_edu.lora import LoRAConfig

D = 384


def _rec(method="lora", r=8, targets=("query", "value"), metric=0.8, seed=0, alpha=16.0, **kw):
    right = round(872 * metric)  # per-sentence verdicts, the right ones first: runs nest
    return {
        "eval_correct": "1" * right + "0" * (872 - right),
        "task": kw.pop("task", "sst2"),
        "method": method,
        "r": r if method == "lora" else None,
        "alpha": alpha if method == "lora" else None,
        "target_modules": list(targets) if method == "lora" else None,
        "seed": seed,
        "metric": metric,
        "metric_name": "accuracy",
        "trainable_params": 770 + (2 * D * r * len(targets) * 6 if method == "lora" else 0),
        "total_params": 22_000_000,
        "n_train": 4000,
        "epochs": 2,
        "lr": 2e-3,
        "init": "kaiming",
        "use_rslora": False,
        **kw,
    }


def _table5_records(qv=0.84, single=0.80):
    recs = [_rec("head", metric=0.78)]
    for r, targets in TABLE5_TARGETS:
        metric = (
            qv if targets == ("query", "value") else single if len(targets) == 1 else qv - 0.005
        )
        recs.append(_rec(r=r, targets=targets, metric=metric))
    return recs


def test_targets_label():
    assert figures.targets_label(["query", "value"]) == "q,v"
    assert figures.targets_label(["attention.output.dense"]) == "o"
    assert figures.targets_label(["all-linear"]) == "all-linear"


def test_table5_reads_each_target_set_once_with_its_budget():
    rows = figures.table5(_table5_records())
    assert [r["targets"] for r in rows] == [figures.targets_label(t) for _, t in TABLE5_TARGETS]
    qv = next(r for r in rows if r["targets"] == "q,v")
    assert qv["metric"] == pytest.approx(84.0) and qv["trainable_lora"] == 73_728
    assert qv["paper_mnli"] == 91.3


def test_table6_averages_seeds_and_skips_missing_ranks():
    recs = [_rec(r=1, metric=0.80), _rec(r=1, metric=0.82, seed=1), _rec(r=8, metric=0.83)]
    recs.append(_rec(r=1, targets=("query",), metric=0.79))
    rows = figures.table6(recs)
    assert [r["r"] for r in rows] == [1, 8]
    assert rows[0]["q,v"] == pytest.approx(81.0) and rows[0]["q,v seeds"] == 2
    assert rows[0]["q"] == pytest.approx(79.0) and rows[1]["q"] is None


def _orthonormal_rows(n, rng):
    return np.linalg.qr(rng.standard_normal((D, n)))[0].T


def _adapters(shared: int, seed: int = 0):
    """Synthetic adapters whose r=8 A shares `shared` directions with the r=64 A and the seeds."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((D, D))
    common = _orthonormal_rows(shared, rng) if shared else np.zeros((0, D))

    def layer(r, key):
        rest = rng.standard_normal((r - shared, D))
        scales = np.arange(shared, 0, -1)[:, None] * 100.0  # distinct: a well-defined top
        A = np.vstack([scales * common, rest]) if shared else rest
        B = rng.standard_normal((D, r)) * 0.01
        return figures.LayerUpdate(f"layer.{key[1]}.{key[0]}", key[1], key[0], W, A, B, 16 / r)

    keys = [(k, layer_) for k in ("query", "value") for layer_ in range(6)]
    return {
        (r, s): {key: layer(r, key) for key in keys}
        for r, s in ((4, 0), (8, 0), (8, 1), (64, 0), (64, 1))
    }


def test_similarities_find_shared_directions_and_chance():
    adapters = _adapters(shared=2)
    fig3 = figures.rank_similarity(adapters)
    assert set(fig3) == {(k, layer) for k in ("query", "value") for layer in figures.FIGURE3_LAYERS}
    grid = fig3[("query", 3)]
    assert grid.shape == (8, 64) and grid[0, 0] > 0.99  # the scaled common directions lead
    fig4 = figures.seed_similarity(adapters)
    assert fig4["query"].shape == fig4["random"].shape == (64, 64)
    assert figures.shared_directions(fig4["query"]) == 2
    assert figures.shared_directions(fig4["random"]) == 0
    assert abs(fig4["random"][63, 63] - 64 / D) < 0.05  # chance level max(i, j) / d


def test_shared_directions_edges():
    assert figures.shared_directions(np.ones((3, 3))) == 3
    assert figures.shared_directions(np.zeros((3, 3))) == 0
    # two shared directions then nothing: φ(i, i) = 2/i for i > 2 stays ≥ 0.5 up to i = 4,
    # but the third and fourth directions add nothing
    phi = np.array([1.0, 1.0, 2 / 3, 2 / 4, 2 / 5])
    assert figures.shared_directions(np.diag(phi)) == 2


def test_table7_and_layer_update():
    adapters = _adapters(shared=0)
    u = adapters[(4, 0)][("query", 3)]
    assert np.allclose(u.delta_W, u.scaling * u.B @ u.A)
    start = {r: {k: v.A.copy() for k, v in adapters[(r, 0)].items()} for r in (4, 64)}
    t7 = figures.table7(adapters, initial=start)
    assert set(t7) == {4, 64}
    for row in t7.values():
        assert row["proj_W_on_W"] >= row["proj_W_on_delta"]
        assert row["amplification"] == pytest.approx(row["delta_W_norm"] / row["proj_W_on_delta"])
        assert row["A_moved"] == 0.0  # A equals the start given
        # random ΔW and B: inside the null distribution, not above its upper tail
        assert row["null_mean"] < row["null_p95"] and 5 < row["null_percentile"] < 95
        assert 0.8 < row["times_chance"] < 1.25 and row["B_percentile"] < 99


def test_table7_finds_an_update_aligned_with_w_above_chance():
    adapters = _adapters(shared=0)
    u = adapters[(4, 0)][("query", figures.MIDDLE_LAYER)]
    U, _, Vt = np.linalg.svd(u.W)
    # an update along W's 5th-8th singular directions: well inside W's strong part
    aligned = figures.LayerUpdate(u.name, u.layer, u.kind, u.W, Vt[4:8] * 2, U[:, 4:8], 1.0)
    adapters[(4, 0)][("query", figures.MIDDLE_LAYER)] = aligned
    start = {r: {k: v.A * 0.5 for k, v in adapters[(r, 0)].items()} for r in (4, 64)}
    row = figures.table7(adapters, initial=start)[4]
    assert row["null_percentile"] == 100.0 and row["B_percentile"] == 100.0
    assert row["times_chance"] > 10 and row["A_moved"] == pytest.approx(1.0)


def test_initial_lora_A_is_where_training_starts():
    """Replaying the start without training gives the A a (nearly frozen) training run began at."""
    import datasets

    from lora_edu.train import finetune_text_classifier

    data = datasets.Dataset.from_dict(
        {"text": ["good film", "bad film", "great", "awful"] * 2, "label": [1, 0, 1, 0] * 2}
    )
    _, model = finetune_text_classifier(
        data, None, lora=LoRAConfig(["query", "value"], r=4, alpha=16), epochs=1, lr=1e-12, batch_size=8, seed=3, progress=False,
        return_model=True,
    )  # fmt: skip
    start = figures.initial_lora_A(4, seed=3)
    trained = {
        (name.rsplit(".", 1)[-1], int(name.split("layer.")[1].split(".")[0])): m.lora_A
        for name, m in model.named_modules()
        if hasattr(m, "lora_A")
    }
    assert trained.keys() == start.keys() and len(start) == 12
    for key, A in trained.items():
        assert np.allclose(A.detach().double().numpy(), start[key], rtol=0, atol=1e-8), key
    other = figures.initial_lora_A(4, seed=4)
    assert not np.allclose(other[("query", 0)], start[("query", 0)])


def test_init_overlap_is_an_artefact_of_the_shared_random_stream():
    assert figures.init_overlap(8, 64, seed=0) == pytest.approx(1.0)


def _table_records(good: bool):
    qv, single = (0.84, 0.80) if good else (0.80, 0.84)
    recs = _table5_records(qv, single)
    recs += [_rec(r=r, metric=qv) for r in (1, 2, 4, 64)]
    recs += [_rec(r=r, targets=("query",), metric=single - 0.01) for r in (1, 2, 4, 8, 64)]
    recs.append(_rec("full", metric=qv + (0.01 if good else 0.05)))
    return recs


def _headline_records(good: bool):
    """The SST-2 headline's runs with per-sentence verdicts: LoRA as good as full fine-tuning,
    or 10 points below it."""
    from lora_edu.experiments import pilot_arm, preset_grid

    quality = {"lora": 0.85 if good else 0.75, "lora-all-linear": 0.84, "full": 0.85, "head": 0.78,
               "bitfit": 0.80}  # fmt: skip
    records = []
    for run in preset_grid("sst2", "headline"):
        correct = "".join(
            "1" if i % 100 < 100 * quality[pilot_arm(run)] else "0" for i in range(872)
        )
        records.append({**run, "task": "sst2", "metric_name": "accuracy", "eval_correct": correct,
                        "metric": correct.count("1") / 872, "trainable_params": 10,
                        "total_params": 1000})  # fmt: skip
    return records


def _verdict_inputs(good: bool):
    recs = _table_records(good)
    grid8 = np.full((8, 64), 0.2 if good else 0.6)  # φ(8, 8): the other directions
    grid8[0, 0] = 0.9 if good else 0.1  # φ(1, 1): the top direction
    fig3 = {(k, layer): grid8 for k in ("query", "value") for layer in figures.FIGURE3_LAYERS}
    seeds = np.diag(np.r_[np.ones(4), np.full(60, 0.05)]) if good else np.full((64, 64), 0.01)
    seeds = seeds + (0.3 if good else 0)
    fig4 = {
        "query": seeds,
        "value": seeds * (0.5 if good else 1),
        "random": np.full((64, 64), 0.02),
    }

    def row(delta, W, random, norm):
        return {"proj_W_on_delta": delta, "proj_W_on_W": W, "proj_W_on_random": random,
                "delta_W_norm": norm, "W_norm": 60.0, "amplification": norm / delta,
                "null_mean": random, "null_p95": 1.5 * random, "times_chance": delta / random,
                "proj_W_on_B": 10 * delta, "B_null_p95": 5 * random, "A_moved": 0.5}  # fmt: skip

    t7 = {4: row(0.3, 20, 0.02, 6.0), 64: row(1.9, 37, 0.3, 3.6)} if good else {
        4: row(0.01, 20, 0.02, 0.01), 64: row(1.9, 37, 0.3, 3.6)
    }  # fmt: skip
    return (
        figures.table5(recs),
        figures.table6(recs),
        fig3,
        fig4,
        t7,
        {"sst2": _headline_records(good)},
        recs,
    )


def test_verdicts_follow_the_stated_rules():
    good = figures.verdicts(*_verdict_inputs(True))
    assert [r["verdict"] for r in good] == ["reproduced"] * 6, good
    bad = figures.verdicts(*_verdict_inputs(False))
    assert {r["analysis"]: r["verdict"] for r in bad} == {
        "Table 5: which weights": "not reproduced",
        "Table 6: the rank": "partially",  # r=1 is still competitive; q alone is not lower
        "Figure 3: r=8 vs r=64": "not reproduced",
        "Figure 4: two seeds": "partially",  # not above chance, but q ≥ v holds trivially
        "Table 7: ΔW vs W": "partially",
        "Figure 2: quality vs parameters": "not reproduced",
    }


def test_tables_5_and_6_decide_only_with_per_sentence_verdicts():
    t5, t6, fig3, fig4, t7, by_task, recs = _verdict_inputs(True)
    bare = [{k: v for k, v in rec.items() if k != "eval_correct"} for rec in recs]
    rows = {r["analysis"]: r for r in figures.verdicts(t5, t6, fig3, fig4, t7, by_task, bare)}
    for name in ("Table 5: which weights", "Table 6: the rank"):
        assert rows[name]["verdict"] == "not measured" and "not measured" in rows[name]["why"]
    decided = {r["analysis"]: r for r in figures.verdicts(*_verdict_inputs(True))}
    assert "p = " in decided["Table 5: which weights"]["why"]


def test_verdicts_markdown_flags_smoke(monkeypatch):
    rows = figures.verdicts(*_verdict_inputs(True))
    monkeypatch.setenv("LORA_EDU_PROFILE", "smoke")
    assert "NOT findings" in figures.verdicts_markdown(rows)
    monkeypatch.setenv("LORA_EDU_PROFILE", "default")
    text = figures.verdicts_markdown(rows)
    assert "NOT findings" not in text and text.count("\n| ") == len(rows) + 1


def test_make_figures_writes_every_figure(monkeypatch, tmp_path):
    recs = _table_records(True)
    monkeypatch.setattr(figures, "sst2_records", lambda progress=True: recs)
    monkeypatch.setattr(figures, "paper_adapters", lambda progress=True: _adapters(shared=1))
    monkeypatch.setattr(figures, "all_task_records", lambda: {"sst2": _headline_records(True)})
    result = figures.make_figures(tmp_path / "out", progress=False)
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert "verdicts.md" in names and len(names) == 2 * 5 + 1
    assert {p.suffix for p in result["paths"]} == {".png", ".pdf", ".md"}
    assert all(p.stat().st_size > 1000 for p in result["paths"] if p.suffix == ".png")


def test_cli_figures_writes_the_verdicts_into_a_readme(monkeypatch, tmp_path, capsys):
    from lora_edu import cli
    from lora_edu.sweep import REPORT_END, REPORT_START

    rows = figures.verdicts(*_verdict_inputs(True))
    seen = {}

    def fake_make_figures(out, progress=True):
        seen["out"] = out
        return {"verdicts": rows, "paths": []}

    monkeypatch.setattr(figures, "make_figures", fake_make_figures)
    readme = tmp_path / "README.md"
    readme.write_text(
        f"# x\n{REPORT_START}\nkept\n{REPORT_END}\n"
        f"{figures.VERDICTS_START}\nold\n{figures.VERDICTS_END}\nafter\n"
    )
    argv = ["figures", "--out", str(tmp_path / "f"), "--readme", str(readme), "--quiet"]
    assert cli.main(argv) == 0
    text = readme.read_text()
    assert "old" not in text and "kept" in text and text.endswith("after\n")
    assert figures.verdicts_markdown(rows) in text
    assert seen["out"] == str(tmp_path / "f") and "Table 7" in capsys.readouterr().out


def test_figure2_verdict_keeps_undecided_apart():
    assert figures._decided_verdict([True, True]) == "reproduced"
    assert figures._decided_verdict([True, None]) == "reproduced where decided"
    assert figures._decided_verdict([None, None]) == "undecided"
    assert figures._decided_verdict([True, False]) == "partially"
    assert figures._decided_verdict([False, None]) == "not reproduced where decided"
    assert figures._decided_verdict([False]) == "not reproduced"
    assert figures._decided_verdict([]) == "not measured"

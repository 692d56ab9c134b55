"""Plots draw what the records say (checked on the artists, not by eye) and save PNG + PDF."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from lora_edu import plots  # noqa: E402


def _rec(method, metric, r=None, alpha=None, seed=0, trainable=100, loss=None):
    return {"task": "sst2", "method": method, "r": r, "alpha": alpha,
            "target_modules": None if r is None else ["query", "value"], "init": None,
            "use_rslora": None, "seed": seed, "n_train": 10, "epochs": 1, "lr": 1e-3,
            "metric_name": "accuracy", "metric": metric, "trainable_params": trainable,
            "total_params": 10_000, "train_seconds": 1.0,
            "history": {"loss": loss or []}}  # fmt: skip


RECORDS = [
    _rec("lora", 0.80, r=8, alpha=16.0, trainable=800),
    _rec("lora", 0.82, r=8, alpha=16.0, trainable=800, seed=1),
    _rec("lora", 0.78, r=2, alpha=16.0, trainable=200),
    _rec("lora", 0.79, r=2, alpha=4.0, trainable=200),
    _rec("full", 0.83, trainable=10_000),
]


def test_metric_vs_params_points_and_log_axis():
    ax = plots.metric_vs_params(RECORDS)
    assert ax.get_xscale() == "log"
    points = sorted(
        (float(line.get_xdata()[0]), round(float(line.get_ydata()[0]), 6))
        for line in ax.get_lines()
        if len(line.get_xdata()) == 1
    )
    assert (800.0, 81.0) in points  # two seeds averaged
    assert (10_000.0, 83.0) in points
    labels = {t.get_text() for t in ax.get_legend().get_texts()}
    assert labels == {"LoRA", "full fine-tuning"}
    plt.close("all")


def test_rank_alpha_heatmap_cells():
    ax = plots.rank_alpha_heatmap(RECORDS)
    data = ax.images[0].get_array()
    assert data.shape == (2, 2)  # r ∈ {2, 8} × α ∈ {4, 16}
    filled = np.ma.filled(np.ma.asarray(data, dtype=float), np.nan)
    assert filled[1, 1] == pytest.approx(81.0)  # r=8, α=16: two seeds averaged
    assert filled[0, 0] == pytest.approx(79.0)  # r=2, α=4
    assert np.isnan(filled[1, 0])  # r=8, α=4 was not run
    plt.close("all")


def test_learning_curves_smooths_and_needs_history():
    recs = [_rec("lora", 0.8, r=4, loss=[1.0, 0.8, 0.6, 0.4]), _rec("full", 0.9)]
    ax = plots.learning_curves(recs, smooth=2)
    (line,) = ax.get_lines()
    assert np.allclose(line.get_ydata(), [0.9, 0.7, 0.5])
    with pytest.raises(ValueError, match="no record holds a loss history"):
        plots.learning_curves([_rec("full", 0.9)])
    plt.close("all")


def test_similarity_heatmap_fixed_scale_and_save(tmp_path):
    ax = plots.similarity_heatmap(np.eye(3), title="φ")
    assert ax.images[0].get_clim() == (0.0, 1.0)
    paths = plots.save_figure(ax.figure, "phi", tmp_path / "figs")
    assert [p.suffix for p in paths] == [".png", ".pdf"] and all(p.stat().st_size for p in paths)
    with pytest.raises(ValueError, match="expected a 2-D grid"):
        plots.similarity_heatmap(np.ones(3))
    plt.close("all")


def test_empty_records_error():
    with pytest.raises(ValueError, match="run `lora-edu sweep` first"):
        plots.metric_vs_params([])


def test_metric_vs_params_joins_lora_ranks_of_one_alpha():
    ax = plots.metric_vs_params(RECORDS)
    lines = [line for line in ax.get_lines() if len(line.get_xdata()) > 1]
    assert len(lines) == 1  # α=16: r=2 and r=8; α=4 has a single rank, so no line
    assert list(lines[0].get_xdata()) == [200, 800]
    assert np.allclose(lines[0].get_ydata(), [78.0, 81.0])
    plt.close("all")


def test_targets_and_config_labels():
    assert plots.targets_label(["query", "value"]) == "q,v"
    assert plots.targets_label(["query", "key", "value", "attention.output.dense"]) == "q,k,v,o"
    assert plots.targets_label(["all-linear"]) == "all-linear"
    assert plots.config_label(_rec("lora", 0.8, r=4)) == "LoRA r=4"
    assert plots.config_label(_rec("head", 0.8)) == "probe"


def _target_rec(targets, r, metric, seed=0):
    return {**_rec("lora", metric, r=r, alpha=16.0, seed=seed, trainable=73_728 + 770),
            "target_modules": targets}  # fmt: skip


def test_target_sets_bar_one_bar_per_set_with_seed_range():
    recs = [
        _target_rec(["query"], 16, 0.80),
        _target_rec(["query", "value"], 8, 0.82),
        _target_rec(["query", "value"], 8, 0.86, seed=1),
        _rec("full", 0.9),  # not LoRA: no bar
    ]
    ax = plots.target_sets_bar(recs)
    heights = [p.get_height() for p in ax.patches]
    assert np.allclose(heights, [80.0, 84.0])  # in order of appearance, seeds averaged
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["q\nr=16\n74.5k", "q,v\nr=8\n74.5k"]
    # One error bar, for the two-seed set: from 82 to 86.
    (segments,) = [c.get_segments() for c in ax.collections]
    assert np.allclose(segments[0][:, 1], [82.0, 86.0])
    with pytest.raises(ValueError, match="no LoRA records"):
        plots.target_sets_bar([_rec("full", 0.9)])
    plt.close("all")


def _epochs_rec(method, per_epoch, seed=0, r=None):
    rec = _rec(method, per_epoch[-1], r=r, alpha=None if r is None else 16.0, seed=seed)
    rec["history"] = {"loss": [], "epochs": [{"epoch": i + 1, "metric": m}
                                             for i, m in enumerate(per_epoch)]}  # fmt: skip
    return rec


def test_epoch_curves_mean_and_band_over_seeds():
    recs = [
        _epochs_rec("lora", [0.80, 0.84], r=8),
        _epochs_rec("lora", [0.82, 0.86], r=8, seed=1),
        _epochs_rec("head", [0.70, 0.71]),
        _rec("full", 0.9),  # no epoch history: skipped
    ]
    ax = plots.epoch_curves(recs)
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"LoRA r=8 (2 seeds)", "probe (1 seed)"}
    assert np.allclose(lines["LoRA r=8 (2 seeds)"].get_ydata(), [81.0, 85.0])
    assert list(lines["probe (1 seed)"].get_xdata()) == [1, 2]
    (band,) = ax.collections  # only the two-seed configuration has a band
    ys = band.get_paths()[0].vertices[:, 1]
    assert ys.min() == pytest.approx(80.0) and ys.max() == pytest.approx(86.0)
    with pytest.raises(ValueError, match="metric per epoch"):
        plots.epoch_curves([_rec("full", 0.9)])
    plt.close("all")


def test_time_memory_bars_estimate_and_measured_peak():
    from lora_edu.experiments import training_memory_mb

    recs = [_rec("full", 0.9, trainable=10_000), _rec("head", 0.7, trainable=10)]
    recs[0]["train_seconds"], recs[1]["train_seconds"] = 5.0, 1.0
    ax_time, ax_memory = plots.time_memory_bars(recs)
    assert [t.get_text() for t in ax_time.get_xticklabels()] == ["probe", "full FT"]  # by size
    assert [p.get_height() for p in ax_time.patches] == [1.0, 5.0]
    estimates = [training_memory_mb(recs[1]), training_memory_mb(recs[0])]
    assert np.allclose([p.get_height() for p in ax_memory.patches], estimates)  # CPU: no peak
    plt.close("all")

    recs[0]["peak_memory_mb"] = 123.0  # a CUDA run measured its peak
    _, ax_memory = plots.time_memory_bars(recs)
    heights = [p.get_height() for p in ax_memory.patches]
    assert np.allclose(heights[:2], estimates)
    assert np.isnan(heights[2]) and heights[3] == 123.0
    legend = {t.get_text() for t in ax_memory.get_legend().get_texts()}
    assert legend == {"estimate: weights + grads + Adam (fp32)", "measured peak (CUDA)"}
    plt.close("all")


def test_lora_bypass_diagram_draws_the_layer_to_scale():
    from lora_edu.plots import lora_bypass_diagram

    ax = lora_bypass_diagram(d_in=384, d_out=384, r=8, alpha=16)
    texts = " ".join(t.get_text() for t in ax.texts)
    assert "8 × 384" in texts and "384 × 8" in texts and "r = 8" in texts and "= 2" in texts
    polygons = [p for p in ax.patches if type(p).__name__ == "Polygon"]
    heights = [np.ptp(p.get_xy()[:, 1]) for p in polygons]
    assert len(polygons) == 2 and max(heights) > 5 * min(
        np.ptp(p.get_xy()[[2, 3], 1]) for p in polygons
    )  # the bottleneck edge of A is far narrower than its input edge
    with pytest.raises(ValueError, match="not low rank"):
        lora_bypass_diagram(d_in=8, d_out=4, r=6)
    with pytest.raises(ValueError, match="positive integer"):
        lora_bypass_diagram(r=0)


def test_pilot_curves_draw_each_arm_with_its_seed_range_and_mark_the_best():
    from lora_edu.pilots import decide_arm

    def rec(lr, seed, correct):
        return {"lr": lr, "seed": seed, "metric": correct.count("1") / len(correct),
                "metric_name": "accuracy", "eval_correct": correct}  # fmt: skip

    records = [rec(1e-3, 0, "1" * 80 + "0" * 20), rec(1e-3, 1, "1" * 84 + "0" * 16)]
    records += [rec(1e-2, s, "1" * 60 + "0" * 40) for s in (0, 1)]
    records += [rec(1e-4, s, "1" * 70 + "0" * 30) for s in (0, 1)]
    decision = decide_arm("lora", [1e-4, 1e-3, 1e-2], records)
    ax = plots.pilot_curves({"lora": decision})
    assert ax.get_xscale() == "log"
    line = ax.containers[0]  # the error bars of the one arm
    x, y = line.lines[0].get_data()
    assert list(x) == [1e-4, 1e-3, 1e-2] and np.allclose(y, [70, 82, 60])
    best = [l for l in ax.lines if l.get_markersize() == 9]
    assert best and best[0].get_data()[0][0] == 1e-3
    segments = line.lines[2][0].get_segments()  # the bar at 1e-3 spans the seeds: 80 to 84
    spans = {s[0, 0]: sorted(s[:, 1].tolist()) for s in segments}
    assert np.allclose(spans[1e-3], [80, 84]) and np.allclose(spans[1e-2], [60, 60])

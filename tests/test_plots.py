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

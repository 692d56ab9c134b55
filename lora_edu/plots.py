"""One figure style, and the LoRA paper's kinds of plot drawn from sweep records or matrices.

Every function takes an optional matplotlib ``ax`` and returns it, so notebooks can compose
figures; ``save_figure`` writes PNG and PDF side by side. Nothing here trains or loads data:
records come from ``lora_edu.sweep.read_results`` and matrices from ``lora_edu.analysis``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: One colour per method, the same in every figure.
METHOD_COLORS = {"lora": "#1f77b4", "full": "#d62728", "head": "#7f7f7f", "bitfit": "#2ca02c"}
METHOD_LABELS = {
    "lora": "LoRA",
    "full": "full fine-tuning",
    "head": "linear probe (head only)",
    "bitfit": "BitFit (biases + head)",
}

STYLE = {
    "figure.dpi": 110,
    "savefig.dpi": 200,
    "savefig.bbox": "tight",
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "font.size": 10,
    "legend.frameon": False,
}


def apply_style() -> None:
    """Use the package's figure style for every later figure (``matplotlib.rcParams``)."""
    import matplotlib as mpl

    mpl.rcParams.update(STYLE)


def _axes(ax: Any) -> Any:
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    apply_style()
    return plt.subplots(figsize=(6, 4))[1]


def _percent(metric: float) -> float:
    return 100.0 * metric


def metric_vs_params(records: Sequence[dict[str, Any]], ax: Any = None) -> Any:
    """The LoRA paper's Figure 2 view: metric (in %) against trainable parameters (log axis), one
    colour per method; LoRA points are labelled with their rank, several seeds are averaged and
    drawn with an error bar spanning min to max."""
    from lora_edu.sweep import aggregate

    ax = _axes(ax)
    rows = aggregate(records)
    if not rows:
        raise ValueError("no records to plot; run `lora-edu sweep` first")
    seen = set()
    for row in rows:
        method = row["method"]
        x, y = row["trainable_params"], _percent(row["metric"])
        half = _percent(row["spread"]) / 2
        ax.errorbar(
            x,
            y,
            yerr=half if len(row["seeds"]) > 1 else None,
            fmt="o",
            color=METHOD_COLORS.get(method, "black"),
            label=None if method in seen else METHOD_LABELS.get(method, method),
            capsize=3,
        )
        seen.add(method)
        if method == "lora":
            ax.annotate(
                f"r={row['r']}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8
            )
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel(f"{rows[0]['metric_name']} (%)")
    ax.legend(loc="lower right")
    return ax


def rank_alpha_heatmap(records: Sequence[dict[str, Any]], ax: Any = None) -> Any:
    """Metric (in %, mean over seeds) of LoRA runs on a grid of rank (rows) × alpha (columns);
    empty cells are configurations not run."""
    from lora_edu.sweep import aggregate

    ax = _axes(ax)
    rows = [r for r in aggregate(records) if r["method"] == "lora"]
    if not rows:
        raise ValueError("no LoRA records to plot")
    ranks = sorted({r["r"] for r in rows})
    alphas = sorted({r["alpha"] for r in rows})
    grid = np.full((len(ranks), len(alphas)), np.nan)
    for r in rows:
        grid[ranks.index(r["r"]), alphas.index(r["alpha"])] = _percent(r["metric"])
    image = ax.imshow(grid, cmap="viridis", aspect="auto", origin="lower")
    for i in range(len(ranks)):
        for j in range(len(alphas)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", color="white")
    ax.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas])
    ax.set_yticks(range(len(ranks)), [str(r) for r in ranks])
    ax.set_xlabel("alpha (α)")
    ax.set_ylabel("rank r")
    ax.figure.colorbar(image, ax=ax, label=f"{rows[0]['metric_name']} (%)")
    return ax


def learning_curves(records: Sequence[dict[str, Any]], ax: Any = None, smooth: int = 10) -> Any:
    """Training loss per step (moving average over ``smooth`` steps) of each record that kept
    its history, labelled by method (and rank for LoRA)."""
    ax = _axes(ax)
    drawn = 0
    for rec in records:
        loss = np.asarray((rec.get("history") or {}).get("loss", []), dtype=float)
        if loss.size == 0:
            continue
        k = max(1, min(smooth, loss.size))
        curve = np.convolve(loss, np.ones(k) / k, mode="valid")
        label = METHOD_LABELS.get(rec["method"], rec["method"])
        if rec["method"] == "lora":
            label += f" r={rec['r']}"
        ax.plot(
            np.arange(k, loss.size + 1),
            curve,
            color=METHOD_COLORS.get(rec["method"]),
            label=f"{label} (seed {rec['seed']})",
            alpha=0.8,
        )
        drawn += 1
    if not drawn:
        raise ValueError("no record holds a loss history")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"training loss ({k}-step moving average)")
    ax.legend(fontsize=8)
    return ax


def similarity_heatmap(grid: np.ndarray, ax: Any = None, title: str | None = None) -> Any:
    """A subspace-similarity grid φ(i, j) (``analysis.subspace_similarity_grid``) in the style of
    the LoRA paper's Figures 3–4: i down, j across, both from 1, colour scale fixed to [0, 1]."""
    ax = _axes(ax)
    grid = np.asarray(grid, dtype=float)
    if grid.ndim != 2:
        raise ValueError(f"expected a 2-D grid φ[i-1, j-1], got shape {grid.shape}")
    image = ax.imshow(grid, cmap="magma", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(grid.shape[1]), [str(j) for j in range(1, grid.shape[1] + 1)])
    ax.set_yticks(range(grid.shape[0]), [str(i) for i in range(1, grid.shape[0] + 1)])
    ax.set_xlabel("j")
    ax.set_ylabel("i")
    ax.grid(False)
    if title:
        ax.set_title(title)
    ax.figure.colorbar(image, ax=ax, label="φ(i, j)")
    return ax


def save_figure(fig: Any, name: str, out: str | os.PathLike = "figures") -> list[Path]:
    """Write ``fig`` as ``<out>/<name>.png`` and ``.pdf``; return both paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    for path in paths:
        fig.savefig(path)
    return paths

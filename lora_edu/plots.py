"""One figure style, and the LoRA paper's kinds of plot drawn from sweep records or matrices.

Every function takes an optional matplotlib ``ax`` and returns it, so notebooks can compose
figures; ``save_figure`` writes PNG and PDF side by side. Nothing here trains or loads data:
records come from ``lora_edu.store.read_results`` and matrices from ``lora_edu.analysis``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: One colour per method, the same in every figure.
METHOD_COLORS = {
    "lora": "#1f77b4",
    "full": "#d62728",
    "head": "#7f7f7f",
    "bitfit": "#2ca02c",
    "none": "#9467bd",
}
METHOD_LABELS = {
    "lora": "LoRA",
    "full": "full fine-tuning",
    "head": "linear probe (head only)",
    "bitfit": "BitFit (biases + head)",
    "none": "zero-shot (no training)",
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
    colour per method; LoRA points are labelled with their rank (the ranks of one α and target
    set joined by a line), several seeds are averaged and drawn with an error bar spanning min
    to max."""
    from lora_edu.report import aggregate

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
    families: dict[tuple, list[tuple[float, float]]] = {}
    for row in rows:
        if row["method"] == "lora":
            family = (row["alpha"], tuple(row["target_modules"] or ()))
            families.setdefault(family, []).append(
                (row["trainable_params"], _percent(row["metric"]))
            )
    for points in families.values():
        if len(points) > 1:  # the ranks of one α and target set, joined in order of size
            xs, ys = zip(*sorted(points), strict=True)
            ax.plot(xs, ys, "-", color=METHOD_COLORS["lora"], alpha=0.4, zorder=1)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel(f"{rows[0]['metric_name']} (%)")
    ax.legend(loc="lower right")
    return ax


def rank_alpha_heatmap(records: Sequence[dict[str, Any]], ax: Any = None) -> Any:
    """Metric (in %, mean over seeds) of LoRA runs on a grid of rank (rows) × alpha (columns);
    empty cells are configurations not run."""
    from lora_edu.report import aggregate

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
    ax.grid(False)
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


#: The LoRA paper's names of the attention projections (W_q, W_k, W_v, W_o).
TARGET_SHORT = {"query": "q", "key": "k", "value": "v", "attention.output.dense": "o"}
METHOD_SHORT = {"lora": "LoRA", "full": "full FT", "head": "probe", "bitfit": "BitFit"}


def pilot_curves(
    decisions: dict[str, Any], ax: Any = None, names: dict[str, str] | None = None
) -> Any:
    """A learning-rate pilot as a picture: for each arm (``pilots.ArmDecision``, e.g. from
    ``lora_edu.results(task).pilot()``) its metric (%) against the learning rate on a log axis,
    the mean over seeds with the seeds' range as error bars, the best rate filled and the rates
    tied with it (paired test, p ≥ 0.05) ringed."""
    ax = _axes(ax)
    for arm, decision in decisions.items():
        color = METHOD_COLORS.get(arm.split("-")[0], None)
        style = "--" if arm.endswith("all-linear") else "-"
        rates = list(decision.grid)
        means = [_percent(decision.means[lr]) for lr in rates]
        lows = [_percent(decision.lows[lr]) for lr in rates]
        highs = [_percent(decision.highs[lr]) for lr in rates]
        err = [np.subtract(means, lows), np.subtract(highs, means)]
        label = (names or {}).get(arm, METHOD_LABELS.get(arm, arm))
        line = ax.errorbar(rates, means, yerr=err, ls=style, marker="o", ms=4, capsize=3,
                           color=color, label=label)  # fmt: skip
        color = line[0].get_color()
        ax.plot([decision.best], [_percent(decision.means[decision.best])], "o", ms=9, color=color)
        for lr in decision.tied:
            ax.plot([lr], [_percent(decision.means[lr])], "o", ms=11, mfc="none", color=color)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("metric on held-out examples (%)")
    ax.legend(fontsize=8)
    return ax


def targets_label(targets: Sequence[str] | None) -> str:
    """``["query", "value"]`` → ``"q,v"``; ``["all-linear"]`` → ``"all-linear"``; other module
    names stay as given."""
    return ",".join(TARGET_SHORT.get(t, t) for t in targets or ())


def config_label(record: dict[str, Any]) -> str:
    """A short name for a run's method: ``"LoRA r=8"``, ``"probe"``, ``"BitFit"``, ``"full FT"``."""
    method = record["method"]
    label = METHOD_SHORT.get(method, method)
    return f"{label} r={record['r']}" if method == "lora" else label


def _configs(records: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The records grouped by configuration (equal in everything but the seed), in order of
    first appearance."""
    from lora_edu.grid import run_key

    groups: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        groups.setdefault(run_key({**rec, "seed": None}), []).append(rec)
    return list(groups.values())


def _seed_errorbar(ax: Any, x: Sequence[float], samples: Sequence[np.ndarray]) -> None:
    """Error bars from min to max of each sample (drawn only where there are several seeds)."""
    for xi, values in zip(x, samples, strict=True):
        if values.size > 1:
            mean = values.mean()
            low, high = mean - values.min(), values.max() - mean
            ax.errorbar(xi, mean, yerr=[[low], [high]], fmt="none", color="black", capsize=3)


def target_sets_bar(records: Sequence[dict[str, Any]], ax: Any = None) -> Any:
    """The LoRA paper's Table 5 view: one bar per LoRA configuration (in order of first
    appearance), its height the metric (%, mean over seeds, error bar min to max when there are
    several), labelled with the adapted weights (``targets_label``), the rank and the trainable
    parameters (head included)."""
    ax = _axes(ax)
    groups = [g for g in _configs(records) if g[0]["method"] == "lora"]
    if not groups:
        raise ValueError(
            "no LoRA records to plot; target_sets_bar compares LoRA target sets (e.g. the "
            "'targets' preset of SST-2 in lora_edu.tasks.text)"
        )
    samples = [np.array([_percent(r["metric"]) for r in g]) for g in groups]
    means = [s.mean() for s in samples]
    x = np.arange(len(groups))
    ax.bar(x, means, color=METHOD_COLORS["lora"])
    _seed_errorbar(ax, x, samples)
    for xi, s in zip(x, samples, strict=True):
        ax.text(xi, s.max() + 0.3, f"{s.mean():.1f}", ha="center", va="bottom", fontsize=8)
    labels = [
        f"{targets_label(g[0]['target_modules'])}\nr={g[0]['r']}\n"
        f"{(g[0].get('trainable_params') or 0) / 1e3:.1f}k"
        for g in groups
    ]
    ax.set_xticks(x, labels, fontsize=8)
    low, high = min(min(s) for s in samples), max(max(s) for s in samples)
    ax.set_ylim(max(0.0, low - 5), min(100.0, high + 2.5))
    ax.set_ylabel(f"{groups[0][0]['metric_name']} (%)")
    ax.set_xlabel("adapted weights, rank, trainable parameters")
    return ax


def epoch_curves(records: Sequence[dict[str, Any]], ax: Any = None) -> Any:
    """The metric (%) after each epoch (``history["epochs"]``) of each configuration: the mean
    over seeds, with a band from min to max when there are several, labelled by
    ``config_label`` and the number of seeds."""
    ax = _axes(ax)
    groups = _configs(records)
    methods = [g[0]["method"] for g in groups]
    longest = 0
    for group in groups:
        curves = [
            [e["metric"] for e in (rec.get("history") or {}).get("epochs", [])] for rec in group
        ]
        curves = [c for c in curves if c and None not in c]
        if not curves:
            continue
        n = min(len(c) for c in curves)  # seeds of one configuration ran the same epochs
        values = 100.0 * np.array([c[:n] for c in curves])
        epochs = np.arange(1, n + 1)
        method = group[0]["method"]
        color = METHOD_COLORS.get(method) if methods.count(method) == 1 else None
        seeds = f"{len(curves)} seed{'s' if len(curves) > 1 else ''}"
        (line,) = ax.plot(
            epochs,
            values.mean(axis=0),
            "o-",
            color=color,
            label=f"{config_label(group[0])} ({seeds})",
        )
        if len(curves) > 1:
            ax.fill_between(
                epochs, values.min(axis=0), values.max(axis=0), color=line.get_color(), alpha=0.2
            )
        longest = max(longest, n)
    if not longest:
        raise ValueError("no record holds a metric per epoch (history['epochs'])")
    ax.set_xticks(range(1, longest + 1))
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{groups[0][0]['metric_name']} (%) after the epoch")
    ax.legend(fontsize=8)
    return ax


def time_memory_bars(records: Sequence[dict[str, Any]], axes: Any = None) -> tuple[Any, Any]:
    """Two panels, one bar per configuration in order of trainable parameters: training
    seconds (mean over seeds, error bar min to max), and training memory for the model's state
    from ``experiments.training_memory_mb`` (weights + gradients + Adam's two moments in fp32:
    an estimate from the parameter counts, drawn hatched) beside the measured CUDA peak
    (``peak_memory_mb``) where records have one. ``axes``: a pair of axes, or None for a new
    figure; returns the pair."""
    from lora_edu.experiments import training_memory_mb

    groups = sorted(_configs(records), key=lambda g: g[0].get("trainable_params") or 0)
    if not groups:
        raise ValueError("no records to plot; run `lora-edu sweep` first")
    if axes is None:
        import matplotlib.pyplot as plt

        apply_style()
        axes = plt.subplots(1, 2, figsize=(10, 3.6))[1]
    ax_time, ax_memory = axes
    x = np.arange(len(groups))
    colors = [METHOD_COLORS.get(g[0]["method"], "black") for g in groups]
    seconds = [np.array([r.get("train_seconds", np.nan) for r in g], dtype=float) for g in groups]
    ax_time.bar(x, [s.mean() for s in seconds], color=colors)
    _seed_errorbar(ax_time, x, seconds)
    ax_time.set_ylabel("training time (s)")
    measured = [
        np.array([r["peak_memory_mb"] for r in g if r.get("peak_memory_mb") is not None])
        for g in groups
    ]
    has_measured = any(m.size for m in measured)
    width = 0.4 if has_measured else 0.8
    ax_memory.bar(
        x - width / 2 if has_measured else x,
        [training_memory_mb(g[0]) for g in groups],
        width,
        color=colors,
        hatch="//",
        edgecolor="white",
        label="estimate: weights + grads + Adam (fp32)",
    )
    if has_measured:
        ax_memory.bar(
            x + width / 2,
            [m.mean() if m.size else np.nan for m in measured],
            width,
            color=colors,
            label="measured peak (CUDA)",
        )
    ax_memory.set_ylabel("training memory (MiB)")
    ax_memory.legend(fontsize=8)
    labels = [config_label(g[0]) for g in groups]
    for ax in (ax_time, ax_memory):
        ax.set_xticks(x, labels, fontsize=8)
    return ax_time, ax_memory


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


def loss_mask_strip(
    tokens: Sequence[str], counted: Sequence[bool], ax: Any = None, per_row: int = 12
) -> Any:
    """The tokens of one training example in reading order, each in a box: coloured where its
    prediction counts in the loss (``counted``), grey where it is masked (label -100)."""
    if len(tokens) != len(counted):
        raise ValueError(f"{len(tokens)} tokens but {len(counted)} mask entries")
    rows = -(-len(tokens) // per_row)
    if ax is None:
        import matplotlib.pyplot as plt

        apply_style()
        ax = plt.subplots(figsize=(per_row * 0.95, 0.42 * rows + 0.4))[1]
    for i, (token, on) in enumerate(zip(tokens, counted, strict=True)):
        row, col = divmod(i, per_row)
        text = token.replace("\n", "↵").replace(" ", "·") or "∅"
        ax.text(col + 0.5, -row, text if len(text) <= 11 else text[:10] + "…", ha="center",
                va="center", fontsize=7, family="monospace",
                bbox={"boxstyle": "round,pad=0.25", "lw": 0,
                      "fc": METHOD_COLORS["lora"] if on else "#dddddd",
                      "alpha": 0.55 if on else 1.0})  # fmt: skip
    ax.set_xlim(0, per_row)
    ax.set_ylim(-rows + 0.5, 0.5)
    ax.axis("off")
    return ax


def lora_bypass_diagram(
    d_in: int = 384, d_out: int = 384, r: int = 8, alpha: float = 16, ax: Any = None
) -> Any:
    """The LoRA layer as a picture: the frozen ``W₀ (d_out × d_in)`` on the main path and the
    trainable bypass ``x → A (r × d_in) → B (d_out × r) → × α/r`` beside it, joined by a sum.
    Each factor is drawn as a trapezoid whose two edges are proportional to its input and output
    widths, so the bottleneck of width ``r`` is visibly narrow."""
    from matplotlib.patches import Circle, FancyArrowPatch, Polygon, Rectangle

    for name, value in (("d_in", d_in), ("d_out", d_out), ("r", r)):
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if r > min(d_in, d_out):
        raise ValueError(f"r={r} is larger than min(d_in, d_out)={min(d_in, d_out)}: not low rank")
    if ax is None:
        import matplotlib.pyplot as plt

        apply_style()
        ax = plt.subplots(figsize=(7.5, 4.2))[1]
    width = max(d_in, d_out)

    def size(d: int) -> float:  # a width of d features, drawn in [0.1, 1.6] (W₀'s height)
        return 0.1 + 1.5 * d / width

    lora, frozen = METHOD_COLORS["lora"], "#9a9a9a"
    # main path: x → W₀ → +
    ax.add_patch(Rectangle((1.2, 3.2), 2.2, 1.6, fc=frozen, alpha=0.35, ec="k", lw=1))
    ax.text(2.3, 4.0, f"$W_0$\n{d_out} × {d_in}\nfrozen", ha="center", va="center", fontsize=9)
    # bypass: A narrows d_in → r, B widens r → d_out
    a_left, a_right = size(d_in), size(r)
    ax.add_patch(Polygon([(1.2, 1.5 - a_left / 2), (1.2, 1.5 + a_left / 2),
                          (2.4, 1.5 + a_right / 2), (2.4, 1.5 - a_right / 2)],
                         fc=lora, alpha=0.45, ec="k", lw=1))  # fmt: skip
    b_left, b_right = size(r), size(d_out)
    ax.add_patch(Polygon([(2.6, 1.5 - b_left / 2), (2.6, 1.5 + b_left / 2),
                          (3.8, 1.5 + b_right / 2), (3.8, 1.5 - b_right / 2)],
                         fc=lora, alpha=0.45, ec="k", lw=1))  # fmt: skip
    ax.text(1.75, 1.5, f"$A$\n{r} × {d_in}", ha="center", va="center", fontsize=9)
    ax.text(3.25, 1.5, f"$B$\n{d_out} × {r}", ha="center", va="center", fontsize=9)
    ax.text(2.5, 1.5 + a_right / 2 + 0.08, f"r = {r}", ha="center", va="bottom", fontsize=8,
            color=lora)  # fmt: skip
    ax.text(2.5, 1.5 - max(a_left, b_right) / 2 - 0.3, "trainable; B = 0 at the start",
            ha="center", fontsize=8, color=lora)  # fmt: skip
    ax.text(4.35, 1.5, f"× α/r\n= {alpha / r:g}", ha="center", va="center", fontsize=9)
    # the sum and the arrows
    ax.add_patch(Circle((5.4, 4.0), 0.28, fc="white", ec="k", lw=1))
    ax.text(5.4, 4.0, "+", ha="center", va="center", fontsize=14)
    arrows = [((0.3, 4.0), (1.2, 4.0)), ((3.4, 4.0), (5.12, 4.0)), ((0.7, 4.0), (1.2, 1.5)),
              ((4.75, 1.5), (5.4, 3.72)), ((5.68, 4.0), (6.6, 4.0))]  # fmt: skip
    for start, end in arrows:
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=12, lw=1.2))
    ax.text(0.15, 4.0, "$x$", ha="right", va="center", fontsize=12)
    ax.text(6.7, 4.0, "$h = W_0x + \\frac{\\alpha}{r}BAx$", ha="left", va="center", fontsize=11)
    ax.set_xlim(-0.2, 9.6)
    ax.set_ylim(0.2, 5.0)
    ax.set_aspect("equal")
    ax.axis("off")
    return ax


def save_figure(fig: Any, name: str, out: str | os.PathLike = "figures") -> list[Path]:
    """Write ``fig`` as ``<out>/<name>.png`` and ``.pdf``; return both paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    for path in paths:
        fig.savefig(path)
    return paths

"""What the budget study found (``lora_edu.budget``), as tables and pictures a learner reads:

    records = read_budget("sst2")
    table = budget_table("sst2", records)          # one row per arm and budget, at its rate
    gaps = budget_gaps("sst2", records, "lora-qv", "full")   # paired tests, per budget
    plot_budget_gaps({"sst2": gaps})

or, in one object (what notebook 19 uses): ``study = read_study("sst2")``, then
``study.table()``, ``study.gaps("lora-qv", "full")``, ``study.plot_pilot()``, …

The data-size study (``lora_edu.data_size``, task ``"sst2-data"``) is read the same way: its
points are training-set sizes where the budget study's are budgets (``study_plan``), and every
row names its point (``point``, ``label``, ``steps``).

At every budget each arm is reported at the rate its held-out pilot chose (``budget.
arm_decisions``: the best mean, and the rates tied with it), on the reported split, mean over its
seeds. Gaps between two arms are paired bootstraps over the reported examples and the seeds
(``stats.compare_records``), one per budget; where an arm has tied rates, every tied rate is
compared and reported.

ARCHITECTURE notes: imports ``budget``, ``data_size``, ``stats``, ``store``; matplotlib on use.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_edu import data_size
from lora_edu.budget import (
    THIRD_SEED,
    StudyPlan,
    arm_decisions,
    budget_plan,
    budget_view,
    next_runs,
    results_path,
)
from lora_edu.stats import SIGNIFICANCE, compare_records
from lora_edu.store import read_results


def study_plan(task: str, records: Sequence[dict[str, Any]] = ()) -> StudyPlan:
    """The plan of ``task``'s study (``"sst2"``/``"e2e"``: the budget study's; ``"sst2-data"``:
    the data-size study's) at the profile its ``records`` were made at (the active profile when
    there are none): default records read in a smoke session keep their default set-up."""
    made_at = {r.get("profile") for r in records} - {None}
    if len(made_at) > 1:
        raise ValueError(f"the records mix profiles {sorted(made_at)}; read one file at a time")
    active = made_at.pop() if made_at else None
    if task == data_size.STUDY_TASK:
        return data_size.data_size_plan(active)
    return budget_plan(task, active)


def _study_file(task: str, profile_name: str | None) -> tuple[Path, str]:
    if task == data_size.STUDY_TASK:
        return data_size.results_path(profile_name), "lora-edu data-size"
    return results_path(task, profile_name), f"lora-edu budget {task}"


def read_budget(
    task: str, path: str | Path | None = None, profile_name: str | None = None
) -> list[dict[str, Any]]:
    """The study's records for ``task`` (default: its results file at the active profile, or at
    ``profile_name``: ``budget.results_path`` or ``data_size.results_path``)."""
    default, command = _study_file(task, profile_name)
    path = Path(path) if path is not None else default
    if not path.exists():
        raise FileNotFoundError(f"no study results at {path}; run `{command}` first")
    return read_results(path)


#: How far an arm of a study has come (``arm_progress``): its rates can be reported from
#: "third seeds" on (decided on the pilot seeds; the chosen rates' third seeds may be missing).
STAGES = ("not started", "pilot", "third seeds", "complete")


def arm_progress(task: str, records: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each arm of ``task``'s study: ``runs`` (done), ``planned`` (the runs ``budget.next_runs``
    asks for next, as (lr, seed)) and ``stage``: "not started", "pilot" (a rate still lacks
    seed 0 or 1, or the grid must grow), "third seeds" (the rates are decided; the third seeds
    at the chosen rates are missing) or "complete"."""
    plan = study_plan(task, records)
    progress = {}
    for arm in plan.arms:
        runs = sum(r["arm"] == arm.name for r in records)
        todo = [(lr, seed) for _, lr, seed in next_runs(task, records, [arm.name], plan)]
        if runs == 0:
            stage = "not started"
        elif not todo:
            stage = "complete"
        elif all(seed == THIRD_SEED for _, seed in todo):
            stage = "third seeds"
        else:
            stage = "pilot"
        progress[arm.name] = {"runs": runs, "planned": todo, "stage": stage}
    return progress


def decided_arms(task: str, records: Sequence[dict[str, Any]]) -> list[str]:
    """The arms whose rates are decided (stage "third seeds" or "complete"), in the plan's
    order: the ones a table or a gap may report."""
    return [arm for arm, p in arm_progress(task, records).items()
            if STAGES.index(p["stage"]) >= STAGES.index("third seeds")]  # fmt: skip


def _require_decided(task: str, records: Sequence[dict[str, Any]], arm: str) -> None:
    progress = arm_progress(task, records)[arm]
    if progress["stage"] in ("not started", "pilot"):
        raise ValueError(
            f"the {arm} arm of the {task} study is at stage {progress['stage']!r} "
            f"({progress['runs']} runs done, {len(progress['planned'])} planned next): its rates "
            "are not decided yet"
        )


def _arm_grid(records: Sequence[dict[str, Any]], arm: str) -> list[float]:
    return sorted({r["lr"] for r in records if r["arm"] == arm})


def chosen_rates(task: str, records: Sequence[dict[str, Any]], arm: str) -> dict[int, list[float]]:
    """The rates the held-out pilot chose for ``arm`` at each point (budget multiple or size):
    the best mean first, then the rates tied with it (p ≥ 0.05). The zero-shot arm has one
    (None). Raises while the arm's rates are not decided (``arm_progress``)."""
    plan = study_plan(task, records)
    spec = plan.arm(arm)
    if spec.method == "none":
        return {m: [None] for m in plan.points}
    _require_decided(task, records, arm)
    decisions = arm_decisions(records, spec, _arm_grid(records, arm), plan.points)
    return {m: [d.best, *sorted(d.tied)] for m, d in decisions.items()}


def _runs(records: Sequence[dict[str, Any]], arm: str, lr: float | None) -> list[dict[str, Any]]:
    return sorted((r for r in records if r["arm"] == arm and r["lr"] == lr),
                  key=lambda r: r["seed"])  # fmt: skip


def budget_table(task: str, records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per arm, point (budget or size) and chosen rate: ``arm``, ``point``, ``label``,
    ``steps``, ``lr``, ``chosen`` ("best" or "tied"), ``seeds``, ``dev`` (held-out mean),
    ``test`` (reported mean), ``test_low``/``test_high`` (its lowest and highest seed), and for
    E2E ``forget`` (the mean rise of the old task's loss since step 0, nats per token). Only
    arms whose rates are decided appear (``decided_arms``)."""
    plan = study_plan(task, records)
    decided = decided_arms(task, records)
    rows = []
    for arm in plan.arms:
        if arm.name not in decided:
            continue
        for m, rates in chosen_rates(task, records, arm.name).items():
            for k, lr in enumerate(rates):
                runs = _runs(records, arm.name, lr)
                dev = [budget_view(r, m, "dev")["metric"] for r in runs]
                test = [budget_view(r, m, "test")["metric"] for r in runs]
                row = {
                    "arm": arm.name, "point": m, "label": plan.label(m),
                    "steps": plan.steps_at(m), "lr": lr,
                    "chosen": "best" if k == 0 else "tied", "seeds": len(runs),
                    "dev": sum(dev) / len(dev), "test": sum(test) / len(test),
                    "test_low": min(test), "test_high": max(test),
                }  # fmt: skip
                forget = [_forgetting(r, m) for r in runs]
                if all(f is not None for f in forget):
                    row["forget"] = sum(forget) / len(forget)
                rows.append(row)
    return rows


def _forgetting(record: dict[str, Any], multiple: int) -> float | None:
    """How much the old task's loss rose between step 0 and the budget (None if not measured)."""
    points = record["checkpoints"]
    before = next((p.get("forget_loss") for p in points if p["step"] == 0), None)
    if before is None:
        return None
    if record["method"] == "none":
        return 0.0
    after = next((p.get("forget_loss") for p in points
                  if p["step"] > 0 and p["multiple"] == multiple), None)  # fmt: skip
    return None if after is None else after - before


def budget_gaps(
    task: str, records: Sequence[dict[str, Any]], arm_a: str, arm_b: str, *, samples: int = 2000
) -> list[dict[str, Any]]:
    """``arm_a`` minus ``arm_b`` on the reported split at each point (budget or size), each at its
    chosen rate (every pair of tied rates, best pair first): ``point``, ``label``, ``steps``,
    ``lr_a``, ``lr_b``,
    ``seeds_a``, ``seeds_b``, ``delta``, its 95 % interval ``ci_low``/``ci_high`` and the
    two-sided ``p_value`` of a paired bootstrap over the examples and seeds; ``verdict``: which
    arm is ahead at p < 0.05, or "tie"."""
    plan = study_plan(task, records)
    rates_a, rates_b = chosen_rates(task, records, arm_a), chosen_rates(task, records, arm_b)
    rows = []
    for m in plan.points:
        for lr_a in rates_a[m]:
            for lr_b in rates_b[m]:
                runs_a, runs_b = _runs(records, arm_a, lr_a), _runs(records, arm_b, lr_b)
                result = compare_records(
                    [budget_view(r, m, "test") for r in runs_a],
                    [budget_view(r, m, "test") for r in runs_b],
                    samples=samples,
                )
                ahead = arm_a if result["delta"] > 0 else arm_b
                rows.append({
                    "point": m, "label": plan.label(m), "steps": plan.steps_at(m),
                    "lr_a": lr_a, "lr_b": lr_b,
                    "seeds_a": len(runs_a), "seeds_b": len(runs_b), "delta": result["delta"],
                    "ci_low": result["ci_low"], "ci_high": result["ci_high"],
                    "p_value": result["p_value"],
                    "verdict": ahead if result["p_value"] < SIGNIFICANCE else "tie",
                })  # fmt: skip
    return rows


def markdown_table(rows: Sequence[Mapping[str, Any]], scale: float = 100.0) -> str:
    """``budget_table`` rows as a markdown table (metrics × ``scale``: percent, or BLEU)."""
    lines = ["| arm | point | steps | rate | chosen | seeds | held-out | reported (min–max) |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        rate = "–" if r["lr"] is None else f"{r['lr']:g}"
        lines.append(
            f"| {r['arm']} | {r['label']} | {r['steps']} | {rate} | {r['chosen']} | "
            f"{r['seeds']} | {scale * r['dev']:.1f} | {scale * r['test']:.1f} "
            f"({scale * r['test_low']:.1f}–{scale * r['test_high']:.1f}) |"
        )
    return "\n".join(lines)


def plot_budget_gaps(gaps: Mapping[str, Sequence[Mapping[str, Any]]], scale: float = 100.0,
                     ax: Any = None) -> Any:  # fmt: skip
    """The gap (A − B) against the study's points (budgets or sizes, log axis) with its 95 %
    interval, one line per task (best rate pair of each point), a dashed line at 0; returns the
    axes."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 3.5))
    for task, rows in gaps.items():
        best = {}
        for row in rows:  # the first row of each point is its best pair
            best.setdefault(row["point"], row)
        ms = sorted(best)
        delta = [scale * best[m]["delta"] for m in ms]
        low = [scale * (best[m]["delta"] - best[m]["ci_low"]) for m in ms]
        high = [scale * (best[m]["ci_high"] - best[m]["delta"]) for m in ms]
        ax.errorbar(ms, delta, yerr=[low, high], marker="o", capsize=3, label=task)
    ax.axhline(0, color="grey", linestyle="--", linewidth=1)
    ax.set_xscale("log", base=2)
    labels = {row["point"]: row["label"] for rows_ in gaps.values() for row in rows_}
    ax.set_xticks(sorted(labels), [labels[m] for m in sorted(labels)])
    ax.set_xlabel(study_plan(next(iter(gaps))).point_title)
    ax.set_ylabel("gap (points), 95 % interval")
    ax.legend()
    return ax


def plot_budget_curves(task: str, rows: Sequence[Mapping[str, Any]], scale: float = 100.0,
                       ax: Any = None) -> Any:  # fmt: skip
    """The reported metric against the study's points (budgets or sizes, log axis), one line per
    arm at its best rate, bars from the lowest to the highest seed; returns the axes."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 3.5))
    for arm in dict.fromkeys(r["arm"] for r in rows):
        best = [r for r in rows if r["arm"] == arm and r["chosen"] == "best"]
        steps = [r["point"] for r in best]
        mean = [scale * r["test"] for r in best]
        err = [[scale * (r["test"] - r["test_low"]) for r in best],
               [scale * (r["test_high"] - r["test"]) for r in best]]  # fmt: skip
        ax.errorbar(steps, mean, yerr=err, marker="o", capsize=3, label=arm)
    ax.set_xscale("log", base=2)
    labels = {r["point"]: r["label"] for r in rows}
    ax.set_xticks(sorted(labels), [labels[m] for m in sorted(labels)])
    ax.set_xlabel(study_plan(task).point_title)
    ax.set_ylabel(f"{study_plan(task).metric} on the reported split")
    ax.set_title(task)
    ax.legend()
    return ax


def pilot_rows(task: str, records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every rate of every arm at every point, on the held-out examples, over the pilot seeds
    (0 and 1) only, as the rate was chosen: ``arm``, ``point``, ``label``, ``lr``, ``seeds``,
    ``n`` (held-out examples), ``mean``, ``low``, ``high`` (lowest and highest seed)."""
    from lora_edu.budget import PILOT_SEEDS

    plan = study_plan(task, records)
    rows = []
    for arm in plan.arms:
        mine = [r for r in records if r["arm"] == arm.name and r["seed"] in PILOT_SEEDS]
        for m in plan.points:
            for lr in sorted({r["lr"] for r in mine}, key=lambda x: -1.0 if x is None else x):
                views = [budget_view(r, m, "dev") for r in mine if r["lr"] == lr]
                scores = [v["metric"] for v in views]
                rows.append({
                    "arm": arm.name, "point": m, "label": plan.label(m), "lr": lr,
                    "seeds": len(scores), "n": len(views[0].get("eval_correct") or "") or None,
                    "mean": sum(scores) / len(scores), "low": min(scores), "high": max(scores),
                })  # fmt: skip
    return rows


def plot_pilot(task: str, records: Sequence[dict[str, Any]], scale: float = 100.0) -> Any:
    """The rate pilot as a picture: one panel per point (budget or size), the held-out metric
    against the learning rate (log axis), one line per arm with bars from the lowest to the
    highest pilot seed; each decided arm's chosen rate is ringed. Returns the figure."""
    import matplotlib.pyplot as plt

    plan = study_plan(task, records)
    rows = [r for r in pilot_rows(task, records) if r["lr"] is not None]
    decided = set(decided_arms(task, records))
    fig, axes = plt.subplots(1, len(plan.points), figsize=(3.2 * len(plan.points), 3.2),
                             sharey=True, squeeze=False)  # fmt: skip
    for ax, m in zip(axes[0], plan.points, strict=True):
        for k, arm in enumerate(dict.fromkeys(r["arm"] for r in rows)):
            mine = [r for r in rows if r["arm"] == arm and r["point"] == m]
            lrs = [r["lr"] for r in mine]
            mean = [scale * r["mean"] for r in mine]
            err = [[scale * (r["mean"] - r["low"]) for r in mine],
                   [scale * (r["high"] - r["mean"]) for r in mine]]  # fmt: skip
            ax.errorbar(lrs, mean, yerr=err, marker="o", capsize=3, color=f"C{k}", label=arm)
            if arm in decided:
                best = chosen_rates(task, records, arm)[m][0]
                y = next(scale * r["mean"] for r in mine if r["lr"] == best)
                ax.scatter([best], [y], s=160, facecolors="none", edgecolors=f"C{k}", lw=1.5)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.set_title(plan.label(m))
        ax.set_xlabel("learning rate")
    axes[0][0].set_ylabel(f"held-out {plan.metric}")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- one object per study


@dataclass
class Study:
    """One study's records and everything this module reads from them, as methods, so that a
    notebook needs one name (``read_study``): ``progress``, ``decided``, ``chosen``, ``table``,
    ``gaps``, ``markdown``, ``pilot_rows``, ``plot_pilot``, ``plot_curves``, ``plot_gaps`` and
    ``plan`` (at the profile the records were made at)."""

    task: str
    records: list[dict[str, Any]]

    @property
    def plan(self) -> StudyPlan:
        return study_plan(self.task, self.records)

    def progress(self) -> dict[str, dict[str, Any]]:
        return arm_progress(self.task, self.records)

    def decided(self) -> list[str]:
        return decided_arms(self.task, self.records)

    def chosen(self, arm: str) -> dict[int, list[float]]:
        return chosen_rates(self.task, self.records, arm)

    def table(self) -> list[dict[str, Any]]:
        return budget_table(self.task, self.records)

    def gaps(self, arm_a: str, arm_b: str, *, samples: int = 2000) -> list[dict[str, Any]]:
        return budget_gaps(self.task, self.records, arm_a, arm_b, samples=samples)

    def markdown(self, rows: Sequence[Mapping[str, Any]], scale: float = 100.0) -> str:
        return markdown_table(rows, scale)

    def pilot_rows(self) -> list[dict[str, Any]]:
        return pilot_rows(self.task, self.records)

    def plot_pilot(self, scale: float = 100.0) -> Any:
        return plot_pilot(self.task, self.records, scale)

    def plot_curves(self, rows: Sequence[Mapping[str, Any]], scale: float = 100.0,
                    ax: Any = None) -> Any:  # fmt: skip
        return plot_budget_curves(self.task, rows, scale, ax)

    def plot_gaps(self, gaps: Sequence[Mapping[str, Any]], scale: float = 100.0,
                  ax: Any = None) -> Any:  # fmt: skip
        return plot_budget_gaps({self.task: gaps}, scale, ax)


def read_study(
    task: str, profile_name: str | None = None, *, path: str | Path | None = None,
    missing_ok: bool = False,
) -> Study:  # fmt: skip
    """``task``'s study (``"sst2"``, ``"e2e"``, ``"sst2-data"``) from its results file at the
    active profile or ``profile_name`` (``read_budget``); ``missing_ok``: a study not started
    yet (no file) has no records instead of raising."""
    try:
        records = read_budget(task, path, profile_name)
    except FileNotFoundError:
        if not missing_ok:
            raise
        records = []
    return Study(task, records)

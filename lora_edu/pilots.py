"""How a learning-rate pilot decides, in one place: every rate of an arm's grid scored on the same
held-out examples, averaged over the pilot's seeds, the best mean chosen, and every other rate
compared with it by a paired test on those examples, so that a rate the pilot cannot tell apart
from the best is reported as a **tie** instead of silently losing.

    decision = decide_arm("lora", grid, records)   # records: the arm's pilot runs, every seed
    decision.best, decision.tied, decision.at_edge

``experiments`` feeds each task's pilot records through ``decide_arm`` (``pilot_decisions``);
the defaults' test checks against the same decisions that each default is the best rate or tied
with it, and that no grid's best sits at its edge (a best at an edge is not an optimum: the grid
is extended first).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from lora_edu.stats import PER_EXAMPLE_FIELDS, SIGNIFICANCE, compare_records


@dataclass(frozen=True)
class ArmDecision:
    """What one arm's pilot decided.

    ``means``: each rate's metric averaged over its seeds, ``lows`` and ``highs`` its lowest
    and highest seed; ``seeds``: how many runs each rate has; ``n_eval``: how many held-out examples every run was scored on (one number: a pilot
    whose rates saw different examples is refused); ``best``: the rate of the highest mean (a
    tie of means goes to the lower rate); ``p_values``: each other rate against the best, a
    paired bootstrap over the examples and seeds (None where the records keep no per-example
    data); ``tied``: the other rates whose difference from the best is not significant
    (p ≥ 0.05).
    """

    arm: str
    grid: tuple[float, ...]
    means: dict[float, float]
    lows: dict[float, float]
    highs: dict[float, float]
    seeds: dict[float, int]
    n_eval: int | None
    best: float
    p_values: dict[float, float | None]
    tied: tuple[float, ...]

    @property
    def at_edge(self) -> bool:
        """Whether the best rate is the smallest or the largest of the grid."""
        return len(self.grid) > 1 and self.best in (min(self.grid), max(self.grid))

    @property
    def paired(self) -> bool:
        """Whether every other rate was compared with the best by a paired test."""
        return all(p is not None for p in self.p_values.values())

    def describe(self, scale: float = 100.0) -> str:
        """One line a reader can check (``describe``)."""
        return describe(self, scale)


def _n_eval(records: Sequence[dict[str, Any]]) -> int | None:
    sizes = set()
    for rec in records:
        field = PER_EXAMPLE_FIELDS.get(rec.get("metric_name"))
        data = rec.get(field) if field else None
        sizes.add(len(data) if data is not None else rec.get("n_eval"))
    sizes.discard(None)
    if len(sizes) > 1:
        raise ValueError(
            f"the pilot's runs were scored on different numbers of examples {sorted(sizes)}: "
            "every rate must be scored on the same held-out examples"
        )
    return sizes.pop() if sizes else None


def decide_arm(
    arm: str,
    grid: Sequence[float],
    records: Sequence[dict[str, Any]],
    *,
    score: Callable[[dict[str, Any]], float] = lambda rec: rec["metric"],
    equal_eval: bool = True,
) -> ArmDecision:
    """The pilot decision of one arm from its ``records`` (every run of the arm at the rates of
    ``grid``, every seed). ``score`` is what "best" means (the metric the headline reports, by
    default). Raises when a rate of the grid has no run, or (unless ``equal_eval`` is False, for
    a pilot known to be unequal and still to be rerun) when rates were scored on different
    numbers of examples."""
    by_rate: dict[float, list[dict[str, Any]]] = {}
    for rec in records:
        by_rate.setdefault(float(rec["lr"]), []).append(rec)
    grid = tuple(sorted(float(lr) for lr in grid))
    missing = [lr for lr in grid if lr not in by_rate]
    if missing:
        raise ValueError(
            f"pilot arm {arm!r} has no run at {', '.join(f'{lr:g}' for lr in missing)}"
        )
    by_rate = {lr: by_rate[lr] for lr in grid}
    try:
        n_eval = _n_eval([rec for runs in by_rate.values() for rec in runs])
    except ValueError:
        if equal_eval:
            raise
        n_eval = None
    means = {lr: sum(score(r) for r in runs) / len(runs) for lr, runs in by_rate.items()}
    best = max(grid, key=lambda lr: (means[lr], -lr))
    p_values: dict[float, float | None] = {}
    for lr in grid:
        if lr == best:
            continue
        try:
            p_values[lr] = compare_records(by_rate[best], by_rate[lr])["p_value"]
        except ValueError:  # records from before per-example data was kept
            p_values[lr] = None
    tied = tuple(lr for lr, p in p_values.items() if p is not None and p >= SIGNIFICANCE)
    return ArmDecision(
        arm=arm,
        grid=grid,
        means=means,
        lows={lr: min(score(r) for r in runs) for lr, runs in by_rate.items()},
        highs={lr: max(score(r) for r in runs) for lr, runs in by_rate.items()},
        seeds={lr: len(runs) for lr, runs in by_rate.items()},
        n_eval=n_eval,
        best=best,
        p_values=p_values,
        tied=tied,
    )


def describe(decision: ArmDecision, scale: float = 100.0) -> str:
    """One line a reader can check: the best rate and mean, the tied rates with their p."""
    seeds = sorted(set(decision.seeds.values()))
    line = (
        f"{decision.arm}: best {decision.best:g} ({scale * decision.means[decision.best]:.1f}, "
        f"{'/'.join(map(str, seeds))} seed{'s' * (seeds != [1])}"
        f"{f', n = {decision.n_eval:,}' if decision.n_eval else ''})"
    )
    if decision.tied:
        ties = ", ".join(
            f"{lr:g} ({scale * decision.means[lr]:.1f}, p = {decision.p_values[lr]:.2f})"
            for lr in decision.tied
        )
        line += f"; tied with it: {ties}"
    unpaired = [lr for lr, p in decision.p_values.items() if p is None]
    if unpaired:
        line += f"; not paired (runs without per-example data): {', '.join(f'{lr:g}' for lr in unpaired)}"
    if decision.at_edge:
        line += "; at the grid's edge: extend the grid"
    return line

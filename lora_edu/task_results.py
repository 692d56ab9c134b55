"""A task's results as a learner reads them: the records of its named sweeps, its headline (one
row per method, mean over seeds), the paired tests between methods and its learning-rate pilot,
through a few documented names instead of the bookkeeping behind them.

    res = lora_edu.results("sst2")
    res.headline()["lora"]["metric"]             # mean over the headline's seeds
    res.compare("lora", "full")["verdict"]        # a paired test on the same sentences
    res.pilot()["lora"].best, res.chosen()         # the learning-rate pilot's decision
    res.records("ranks")                           # the runs of a named sweep
    select(res.records("ranks"), r=8)              # the records with these fields
    aggregate(records)                             # one row per configuration, over seeds

In the ``default`` profile everything is read from the committed ``data/results/``; in
``smoke`` the runs are trained first at a tiny size (numbers not meaningful).
``results(task, profile="default")`` reads the committed results from any session.

The record helpers a notebook needs beside them are re-exported here (``select``,
``every_seed``, ``aggregate``, ``training_memory_mb``), so that one import line serves.

Imports ``config``, ``experiments`` (the presets and the pilots), ``kept`` and ``report``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_edu.config import at_profile
from lora_edu.experiments import (
    ARM_NAMES,
    arm_name,
    every_seed,
    headline_arms,
    headline_comparisons,
    in_grid_order,
    kept_adapters,
    pilot_arm,
    pilot_decisions,
    preset_grid,
    results_file,
    run_presets,
    select,
    sweep_command,
    training_memory_mb,
)
from lora_edu.pilots import ArmDecision
from lora_edu.report import aggregate
from lora_edu.store import read_results

__all__ = [
    "TaskResults", "aggregate", "every_seed", "results", "select", "training_memory_mb",
]  # fmt: skip


@dataclass(frozen=True)
class TaskResults:
    """The results of one task (``sst2``, ``conll2003``, ``vit``, ``e2e``, ``detection``,
    ``matching``, ``style-thick``, ...) at ``profile`` (None: the active one)."""

    task: str
    profile: str | None = None

    @contextlib.contextmanager
    def _profile(self) -> Iterator[None]:
        if self.profile is None:
            yield
        else:
            with at_profile(self.profile):
                yield

    def records(self, *presets: str, train: bool = True) -> list[dict[str, Any]]:
        """The runs of the named sweeps (``headline`` when none is named), one record each; with
        ``train`` the missing ones are trained first (nothing trains when the results are
        committed), else only what is in the file."""
        names = list(presets) or ["headline"]
        with self._profile():
            return _read_or_train(self.task, names, train and self.profile is None)

    def grid(self, *presets: str) -> list[dict[str, Any]]:
        """The run configurations of the named sweeps (``headline`` when none is named)."""
        with self._profile():
            return preset_grid(self.task, list(presets) or ["headline"])

    def headline(self) -> dict[str, dict[str, Any]]:
        """The headline, one row per arm (``lora``, ``full``, ``head``, ...): the mean metric
        over its seeds, the seeds' ``spread``, the trainable parameters and the learning rate."""
        return {pilot_arm(row): row for row in aggregate(self.records("headline"))}

    def comparisons(self) -> list[dict[str, Any]]:
        """Every paired test of the headline: LoRA against each other arm, on the same
        evaluation examples and seeds (``delta``, its interval, ``p_value``, a ``verdict``)."""
        records = self.records("headline")
        with self._profile():
            return headline_comparisons(records, self.task)

    def compare(self, a: str = "lora", b: str = "full") -> dict[str, Any]:
        """The paired test of arm ``a`` against arm ``b`` in the headline."""
        for row in self.comparisons():
            if (row["a"], row["b"]) == (a, b):
                return row
        arms = sorted({row["b"] for row in self.comparisons()})
        raise ValueError(f"no paired test of {a!r} against {b!r} on {self.task}; try b in {arms}")

    def pilot(self) -> dict[str, ArmDecision]:
        """The learning-rate pilot, arm by arm: each rate's mean over seeds, the best, the rates
        tied with it (``pilots.ArmDecision``). Its runs are trained first where missing."""
        with self._profile():
            _read_or_train(f"{self.task}-dev", ["lr-pilot"], self.profile is None)
            return pilot_decisions(self.task)

    def chosen(self) -> dict[str, float]:
        """Each arm's learning rate: the pilot's best."""
        return {arm: decision.best for arm, decision in self.pilot().items()}

    def name(self, arm: str) -> str:
        """How the notebooks name an arm of this task (``arm_name``)."""
        return arm_name(self.task, arm)

    def arms(self) -> tuple[str, ...]:
        """The arms of the headline (``lora`` or ``lora-all-linear``, ``full``, ``head``, ...)."""
        with self._profile():
            return headline_arms(self.task)

    @staticmethod
    def arm(record: dict[str, Any]) -> str:
        """Which arm of a pilot or headline a record is (``lora-all-linear`` or its method)."""
        return pilot_arm(record)

    def names(self) -> dict[str, str]:
        """Every arm's name on this task (``name``), for legends."""
        return {arm: arm_name(self.task, arm) for arm in ARM_NAMES}

    def adapters(self, runs: list[dict[str, Any]], progress: bool = False) -> list[Path]:
        """The kept float16 adapter folders of ``runs`` (grid entries of this task's presets,
        e.g. ``grid("paper-adapters")``), trained first where missing (in ``smoke``)."""
        with self._profile():
            return kept_adapters(self.task, runs, progress=progress)

    def command(self, *presets: str) -> str:
        """The shell command that trains (or, committed, re-reads) the named sweeps."""
        return sweep_command(self.task, list(presets) or ["headline"])

    @property
    def file(self) -> Path:
        """The results file of the task's headline at this profile."""
        with self._profile():
            return results_file(self.task, "headline")


def _read_or_train(task: str, names: list[str], train: bool) -> list[dict[str, Any]]:
    """The records of ``task``'s presets ``names``, one per run in the grid's order (as
    ``run_presets`` returns them); with ``train``, when some are missing, the missing runs are
    trained first (``run_presets``). Committed results are read without loading any dataset."""
    grid = preset_grid(task, names)
    on_disk = [rec for rec in read_results(results_file(task, names)) if rec.get("task") == task]
    found = in_grid_order(on_disk, grid)
    if train and len(found) < len(grid):
        return run_presets(task, names, progress=False)
    return found


def results(task: str, profile: str | None = None) -> TaskResults:
    """The results of ``task`` at ``profile`` (None: the active profile); see the module."""
    return TaskResults(task, profile)

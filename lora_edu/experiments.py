"""The studies behind the notebooks as a reader meets them: which records belong to a named
sweep (``preset_records``), the headline's paired tests and their verdicts
(``headline_comparisons``), how arms are named, and the few helpers the notebooks use to look
at records (``select``, ``every_seed``, ``training_memory_mb``).

    records = run_presets("sst2", ["headline", "ranks"])       # trains only what is missing
    print(sweep_command("sst2", ["headline", "ranks"]))         # the equivalent shell command

The presets themselves (the named sweeps, their learning-rate pilots and constants) are declared
beside their tasks in ``lora_edu.tasks`` and built from ``lora_edu.presets``; they are re-exported
here under the names the notebooks, the tests and older code use.

Where results go (``results_file``): in ``default`` and ``full`` the profile-specific file under
``data/results/`` (``sst2-default.jsonl`` is committed, so the notebooks re-use it instead of
training); in ``smoke`` a fresh temporary file, so CI runs a tiny live sweep through every code
path and never writes into the repository.

Imports ``presets``, ``kept``, ``runner``, ``grid``, ``defaults`` and the task modules (for
their constants); ``stats``, ``store`` and ``report`` on use.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# the constants of the presets, under the names the notebooks and the tests use
from lora_edu.defaults import ATTN_OUT as ATTN_OUT
from lora_edu.defaults import FORMER_LR as FORMER_LR
from lora_edu.defaults import LLAMA_QV as LLAMA_QV
from lora_edu.defaults import QV as QV
from lora_edu.defaults import VIT_ATTENTION as VIT_ATTENTION
from lora_edu.defaults import VIT_ATTENTION_MLP as VIT_ATTENTION_MLP
from lora_edu.grid import _canonical, key_value

# what the repository keeps
from lora_edu.kept import RUN_RECORD as RUN_RECORD
from lora_edu.kept import kept_adapter_dir as kept_adapter_dir
from lora_edu.kept import kept_adapters as kept_adapters
from lora_edu.kept import kept_run_record as kept_run_record
from lora_edu.kept import results_file as results_file
from lora_edu.kept import to_float16 as to_float16
from lora_edu.presets import HEAD_RATES as HEAD_RATES
from lora_edu.presets import HEADLINE_SEEDS as HEADLINE_SEEDS
from lora_edu.presets import arm_runs as arm_runs
from lora_edu.presets import head_rate_decisions as head_rate_decisions
from lora_edu.presets import lr_pilot_chosen as lr_pilot_chosen
from lora_edu.presets import pilot_arm as pilot_arm
from lora_edu.presets import pilot_decisions as pilot_decisions
from lora_edu.presets import preset_grid as preset_grid
from lora_edu.presets import sweep_command as sweep_command
from lora_edu.presets import variant_name as variant_name
from lora_edu.runner import run_sweep
from lora_edu.tasks.distillation import TRANSFER_LABELS as TRANSFER_LABELS
from lora_edu.tasks.distillation import distill_pilot as distill_pilot
from lora_edu.tasks.generation import E2E_ALL_LINEAR_RANK as E2E_ALL_LINEAR_RANK
from lora_edu.tasks.generation import E2E_HEADLINE_SEEDS as E2E_HEADLINE_SEEDS
from lora_edu.tasks.generation import E2E_PILOT_LRS as E2E_PILOT_LRS
from lora_edu.tasks.generation import E2E_RANKS as E2E_RANKS
from lora_edu.tasks.generation import e2e_chosen_lrs as e2e_chosen_lrs
from lora_edu.tasks.registry import all_presets, headline_lora_targets, pilot_rates
from lora_edu.tasks.registry import headline_arms as headline_arms
from lora_edu.tasks.registry import pilot_seeds as pilot_seeds
from lora_edu.tasks.text import ALPHA_RANKS as ALPHA_RANKS
from lora_edu.tasks.text import PAPER_ADAPTERS as PAPER_ADAPTERS
from lora_edu.tasks.text import SST2_RANKS
from lora_edu.tasks.text import TABLE5_TARGETS as TABLE5_TARGETS
from lora_edu.tasks.text import VARIANT_PILOT_LRS as VARIANT_PILOT_LRS
from lora_edu.tasks.text import VARIANT_RUNS as VARIANT_RUNS
from lora_edu.tasks.text import VARIANT_SEEDS as VARIANT_SEEDS
from lora_edu.tasks.text import variants_chosen_lrs as variants_chosen_lrs
from lora_edu.tasks.token import CONLL_RANKS
from lora_edu.tasks.token import SPARSE_CHECK_RUNS as SPARSE_CHECK_RUNS

#: task → preset name → the grid (at the active profile), as the task modules registered them.
PRESETS = all_presets()
#: task → arm → the rates of its learning-rate pilot.
LR_PILOT_LRS: dict[str, dict[str, tuple[float, ...]]] = pilot_rates()
#: LoRA's targets in each task's pilot and headline (r = 8, α = 16).
HEADLINE_LORA_TARGETS: dict[str, tuple[str, ...]] = {
    task: headline_lora_targets(task) for task in LR_PILOT_LRS
}
#: The ranks of each task's rank sweep in ``default``/``full``.
SWEEP_RANKS = {"sst2": list(SST2_RANKS), "conll2003": list(CONLL_RANKS)}


#: The fields a record must share with a grid entry to be that entry's run (the task, budget and
#: seed aside), each compared as run keys compare it.
_MATCH_FIELDS = (
    "method", "r", "alpha", "target_modules", "init", "use_rslora", "variant", "quantize",
    "head_lr", "warmup_ratio", "also_train", "transfer_labels", "distill_temperature",
    "distill_soft_weight",
)  # fmt: skip


@functools.cache
def _default_lrs(task: str) -> dict[str, float]:
    """Each method's default learning rate on ``task`` (looked up once per task)."""
    from lora_edu.tasks import task_spec

    return task_spec(task).default_lr


def _in_grid(record: dict[str, Any], grid: Sequence[dict[str, Any]]) -> bool:
    """Whether ``record`` is one of the ``grid``'s runs (a run without a learning rate takes its
    method's default rate for the task; the budget is the profile's)."""

    defaults = _default_lrs(record["task"])
    for run in grid:
        lr = run.get("lr") if run.get("lr") is not None else defaults.get(run["method"])
        if all(key_value(run, k) == key_value(record, k) for k in _MATCH_FIELDS) and (
            run["method"] == "none" or _canonical(lr) == _canonical(record.get("lr"))
        ):
            return True
    return False


def in_grid_order(
    records: Sequence[dict[str, Any]], grid: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """One record per run of ``grid``, in the grid's order (as ``run_sweep`` returns them): the
    first record with the run's configuration and seed; runs without a record are left out."""
    ordered, used = [], set()
    for run in grid:
        for i, rec in enumerate(records):
            if i not in used and rec.get("seed", 0) == run.get("seed", 0) and _in_grid(rec, [run]):
                ordered.append(rec)
                used.add(i)
                break
    return ordered


def preset_records(task: str, preset: str) -> list[dict[str, Any]]:
    """The runs of ``task``'s ``preset`` already in its results file at the active profile, in
    the file's order; nothing is trained (``run_presets`` trains what is missing). Empty while
    the preset's grid cannot be built yet (a learning-rate pilot still incomplete)."""
    from lora_edu.store import read_results

    try:
        grid = preset_grid(task, preset)
    except ValueError:
        return []
    return [
        rec
        for rec in read_results(results_file(task, preset))
        if rec.get("task") == task and _in_grid(rec, grid)
    ]


#: How the notebooks and the README name each arm of the pilot and the headline.
ARM_NAMES = {
    "lora": "LoRA r=8",
    "lora-all-linear": "LoRA r=8 (all linear)",
    "lora-mlp": "LoRA r=8 (attention + MLP)",
    "lora-pos": "LoRA r=8 + position embeddings",
    "full": "full fine-tuning",
    "head": "the linear probe",
    "bitfit": "BitFit",
    "none": "the base model",
}


def arm_name(task: str, arm: str) -> str:
    """``ARM_NAMES[arm]``, except that on the tasks whose head is more than a linear layer on
    frozen features (detection's box-and-class head, matching's projections) ``head`` is "the
    head alone", and on captioning (the projection into the language model) "the projection
    alone"."""
    if arm == "head" and task.split("-")[0] in ("detection", "matching"):
        return "the head alone"
    if arm == "head" and task.split("-")[0] == "caption":
        return "the projection alone"
    return ARM_NAMES[arm]


def headline_comparisons(
    records: Sequence[dict[str, Any]], task: str, *, samples: int = 2000
) -> list[dict[str, Any]]:
    """Each LoRA arm of ``task``'s headline against every other arm, by a paired bootstrap over
    the same evaluation examples and all seeds of both (``stats.compare_records``): one dict per
    pair with ``a``, ``b`` (arm names), the test's result and its plain ``verdict``. Only the
    headline's own runs count; pairs whose runs are not all there yet are left out."""
    from lora_edu.stats import compare_records, verdict

    grid = preset_grid(task, "headline")
    mine = [rec for rec in records if rec.get("task") == task and _in_grid(rec, grid)]
    by_arm: dict[str, list[dict[str, Any]]] = {}
    for run in grid:
        match = [rec for rec in mine if rec["seed"] == run["seed"] and _in_grid(rec, [run])]
        by_arm.setdefault(pilot_arm(run), []).extend(match[:1])
    arms = [arm for arm in by_arm if len(by_arm[arm]) == sum(pilot_arm(r) == arm for r in grid)]
    rows = []
    for a in (arm for arm in arms if arm.startswith("lora")):
        for b in (arm for arm in arms if arm != a):
            result = compare_records(by_arm[a], by_arm[b], samples=samples)
            text = verdict(result, arm_name(task, a), arm_name(task, b))
            rows.append({"a": a, "b": b, **result, "verdict": text})
    return rows


def run_presets(
    task: str,
    names: str | Sequence[str],
    *,
    out: str | Path | None = None,
    keep_adapters: bool = False,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Run the presets' grid with ``run_sweep`` (finished runs in the results file are re-used,
    so with the committed results nothing is trained) and return its records."""
    out = results_file(task, names) if out is None else Path(out)
    return run_sweep(
        task, preset_grid(task, names), out, keep_adapters=keep_adapters, progress=progress
    )


def select(records: Sequence[dict[str, Any]], **fields: Any) -> list[dict[str, Any]]:
    """The records whose fields equal the given values (``target_modules`` as a list or tuple),
    e.g. ``select(records, method="lora", r=8)``."""

    def norm(value: Any) -> Any:
        return list(value) if isinstance(value, tuple) else value

    return [rec for rec in records if all(norm(rec.get(k)) == norm(v) for k, v in fields.items())]


def every_seed(
    chosen: Sequence[dict[str, Any]], records: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """One configuration, one number: ``report.aggregate`` of every record in ``records`` whose
    configuration (all but the seed) is one of ``chosen``'s, so a view that picked some seeds of
    a configuration still shows all of them."""
    from lora_edu.grid import run_key
    from lora_edu.report import aggregate

    keys = {run_key({**rec, "seed": None}) for rec in chosen}
    return aggregate([rec for rec in records if run_key({**rec, "seed": None}) in keys])


def training_memory_mb(record: dict[str, Any], bytes_per_value: int = 4) -> float:
    """The memory that training holds for the model's state, from the run's parameter counts:
    every weight (fp32) plus a gradient and Adam's two moments for each trainable one. This is
    the part LoRA shrinks (the paper's VRAM saving); activations come on top and are about
    the same for every method. On CUDA, records also carry the measured ``peak_memory_mb``."""
    total = record.get("total_params") or 0
    trainable = record.get("trainable_params") or 0
    return bytes_per_value * (total + 3 * trainable) / 2**20

"""The registry of tasks: each kind of task is a plug-in module of ``lora_edu.tasks`` that
declares its ``TaskSpec``s (data, budget per profile, fine-tuning function, metric) and registers
them by name; the sweep runner, the results store and the report look tasks up here and never
import a task module.

    spec = task_spec("sst2")           # imports the plug-ins on first use
    train, eval = spec.load(); spec.budget()["epochs"]
    task_presets("sst2")["ranks"]()    # the named sweeps a task declares beside its spec

Beside its specs, a task module declares its **presets** (named sweeps: name → a function of the
active profile returning the grid) with ``register_presets``, and with them its learning-rate
pilot (the rates each arm tries, LoRA's targets in the headline, the arms of the headline) and
the presets whose results have a file of their own.

Imports only ``defaults``. The plug-in modules (``TASK_MODULES``) are found by
name with ``importlib`` the first time a task is looked up, so that no module of the package
imports them back.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lora_edu.defaults import FORMER_LR

#: The plug-ins, one module per kind of task.
TASK_MODULES = (
    "lora_edu.tasks.text",
    "lora_edu.tasks.token",
    "lora_edu.tasks.images",
    "lora_edu.tasks.generation",
    "lora_edu.tasks.styles",
    "lora_edu.tasks.distillation",
)


@dataclass(frozen=True)
class TaskSpec:
    """How to run one task: where its data comes from, which fine-tuning function, what budget."""

    name: str
    metric_name: str
    load: Callable[[], tuple[Any, Any]]  # () → (train, eval) datasets at the profile's budget
    finetune: Callable[..., dict[str, Any]]
    budget: Callable[[], dict[str, Any]]  # the profile's n_train, n_eval, epochs, batch_size
    extra: dict[str, Any] = field(default_factory=dict)
    # a run without a learning rate: the rate every sweep used before the pilot
    default_lr: dict[str, float] = field(default_factory=lambda: dict(FORMER_LR))
    # fields of a run (``grid.KEY_FIELDS``) that the sweep runner hands to ``finetune`` as keywords
    # where a run sets them (the distillation study's ``transfer_labels``, ...)
    run_fields: tuple[str, ...] = ()


_FACTORIES: dict[str, Callable[[], TaskSpec]] = {}
_PRESETS: dict[str, dict[str, Callable[[], list[dict[str, Any]]]]] = {}
_PRESET_FILES: dict[tuple[str, str], str] = {}
_PILOT_RATES: dict[str, dict[str, tuple[float, ...]]] = {}
_LORA_TARGETS: dict[str, tuple[str, ...]] = {}
_HEADLINE_ARMS: dict[str, tuple[str, ...]] = {}
_PILOT_SEEDS: dict[str, tuple[int, ...]] = {}


def register_task(name: str, factory: Callable[[], TaskSpec]) -> None:
    """Register the task ``name``: ``factory()`` builds its ``TaskSpec`` (called on each look-up,
    so that heavy imports, e.g. torch, happen only when a task is used)."""
    if name in _FACTORIES and _FACTORIES[name] is not factory:
        raise ValueError(f"task {name!r} is registered twice")
    _FACTORIES[name] = factory


def _discover() -> None:
    for module in TASK_MODULES:
        importlib.import_module(module)


def task_names() -> list[str]:
    """Every registered task's name, in the order the plug-ins register them."""
    _discover()
    return list(_FACTORIES)


def task_spec(name: str) -> TaskSpec:
    """The ``TaskSpec`` registered as ``name`` (``task_names()`` lists them): ``sst2``,
    ``conll2003``, ``vit``, ``e2e``, ``detection``, ``matching``, the style adapters, each with a
    ``-dev`` twin scored on held-out training examples for choosing learning rates, and the
    studies' own tasks (``conll2003-sparse``, ``sst2-distill`` and ``sst2-distill-dev``,
    ``sst2-ffn<rank>``)."""
    _discover()
    if name not in _FACTORIES:
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(_FACTORIES)}")
    return _FACTORIES[name]()


def register_presets(
    task: str,
    presets: dict[str, Callable[[], list[dict[str, Any]]]],
    *,
    files: dict[str, str] | None = None,
) -> None:
    """Register ``task``'s presets: name → a function of the active profile that returns the
    sweep's grid (``grid.make_grid`` entries). ``files``: presets whose results go to a file of
    their own (name → the file's stem, e.g. ``{"variants": "variants"}``)."""
    mine = _PRESETS.setdefault(task, {})
    twice = set(mine) & set(presets)
    if twice:
        raise ValueError(f"presets {sorted(twice)} of task {task!r} are registered twice")
    mine.update(presets)
    _PRESET_FILES.update({(task, name): stem for name, stem in (files or {}).items()})


def register_pilot(
    task: str,
    rates: dict[str, tuple[float, ...]],
    *,
    lora_targets: tuple[str, ...],
    headline_arms: tuple[str, ...] | None = None,
    seeds: tuple[int, ...] = (0,),
) -> None:
    """Register ``task``'s learning-rate pilot: the rates each arm tries (an arm is a method, or
    ``lora-all-linear``), scored on the task's ``-dev`` twin; LoRA's targets in the pilot and
    the headline (r = 8, α = 16); the arms the headline runs (None: every arm of the pilot);
    the seeds each rate runs with in ``default`` (``smoke``: seed 0)."""
    if task in _PILOT_RATES:
        raise ValueError(f"the learning-rate pilot of {task!r} is registered twice")
    _PILOT_RATES[task] = dict(rates)
    _LORA_TARGETS[task] = tuple(lora_targets)
    _PILOT_SEEDS[task] = tuple(seeds)
    if headline_arms is not None:
        _HEADLINE_ARMS[task] = tuple(headline_arms)


def task_presets(task: str) -> dict[str, Callable[[], list[dict[str, Any]]]]:
    """``task``'s presets, name → grid function (empty for a task without presets)."""
    _discover()
    return dict(_PRESETS.get(task, {}))


def all_presets() -> dict[str, dict[str, Callable[[], list[dict[str, Any]]]]]:
    """Every task that has presets → its presets, tasks in alphabetical order (the order in
    which the plug-ins register them depends on which module was imported first)."""
    _discover()
    return {task: dict(_PRESETS[task]) for task in sorted(_PRESETS)}


def preset_file(task: str, preset: str) -> str:
    """The stem of the results file of ``task``'s ``preset``: the task's name, unless the preset
    keeps its results in a file of its own."""
    _discover()
    return _PRESET_FILES.get((task, preset), task)


def pilot_rates(task: str | None = None) -> dict[str, Any]:
    """The learning-rate pilot's rates of ``task`` (arm → rates); without a task, every task's
    (task → arm → rates)."""
    _discover()
    if task is None:
        return {name: dict(rates) for name, rates in _PILOT_RATES.items()}
    if task not in _PILOT_RATES:
        raise ValueError(
            f"task {task!r} has no learning-rate pilot; expected one of {', '.join(_PILOT_RATES)}"
        )
    return dict(_PILOT_RATES[task])


def pilot_seeds(task: str) -> tuple[int, ...]:
    """The seeds each rate of ``task``'s learning-rate pilot runs with (``default``)."""
    pilot_rates(task)
    return _PILOT_SEEDS[task]


def headline_lora_targets(task: str) -> tuple[str, ...]:
    """LoRA's target modules in ``task``'s pilot and headline."""
    pilot_rates(task)
    return _LORA_TARGETS[task]


def headline_arms(task: str) -> tuple[str, ...]:
    """The pilot arms that ``task``'s headline runs (every arm of its pilot unless the task
    registered fewer)."""
    return _HEADLINE_ARMS.get(task) or tuple(pilot_rates(task))

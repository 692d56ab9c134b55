"""The registry of tasks: each kind of task is a plug-in module of ``lora_edu.tasks`` that
declares its ``TaskSpec``s (data, budget per profile, fine-tuning function, metric) and registers
them by name; the sweep runner, the results store and the report look tasks up here and never
import a task module.

    spec = task_spec("sst2")           # imports the plug-ins on first use
    train, eval = spec.load(); spec.budget()["epochs"]

Imports only ``config`` and ``defaults``. The plug-in modules (``TASK_MODULES``) are found by
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


_FACTORIES: dict[str, Callable[[], TaskSpec]] = {}


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
    studies' own tasks (``conll2003-sparse``, ``sst2-distill``, ``sst2-ffn<rank>``)."""
    _discover()
    if name not in _FACTORIES:
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(_FACTORIES)}")
    return _FACTORIES[name]()

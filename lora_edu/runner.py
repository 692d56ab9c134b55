"""Runs a sweep: every configuration of a grid not yet in its results file, one after another,
each record appended as soon as the run finishes (``run_sweep``); ``train_one`` trains one run
and writes nothing, so the Ray runner (``lora_edu.cluster``) shares it.

    records = run_sweep("sst2", make_grid(methods=["lora", "full"], ranks=[4, 8]), "out.jsonl")

Imports ``grid``, ``store`` and the task registry (``tasks.registry``), never a task module;
torch, the layer and the training code only when a run trains.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lora_edu.config import profile
from lora_edu.grid import describe_run, run_key
from lora_edu.store import read_results, write_record
from lora_edu.tasks.registry import TaskSpec, task_spec

if TYPE_CHECKING:  # torch is imported only when a sweep runs
    from lora_edu.lora import LoRAConfig


def n_examples(data: Any) -> int:
    """How many training examples a task's data holds: a ``datasets.Dataset``, an
    ``(images, labels)`` pair (matching) or a dict of arrays with ``labels`` (detection)."""
    if isinstance(data, dict):
        return len(data["labels"])
    if isinstance(data, tuple):
        return len(data[-1])
    return len(data)


def _full_config(
    task: TaskSpec, run: dict[str, Any], n_train: int, budget: dict[str, Any]
) -> dict[str, Any]:
    # The learning rate actually used is part of the run's identity: resolve the default here.
    defaults = task.default_lr
    if run["method"] == "none":
        lr = None  # nothing trains
    else:
        lr = defaults[run["method"]] if run.get("lr") is None else float(run["lr"])
    return {**run, "lr": lr, "task": task.name, "n_train": n_train, "epochs": budget["epochs"]}


def run_sweep(
    task: str | TaskSpec,
    runs: Iterable[dict[str, Any]],
    out: str | os.PathLike,
    *,
    keep_adapters: bool = False,
    progress: bool = True,
    device: Any = None,
) -> list[dict[str, Any]]:
    """Run every configuration of ``runs`` not yet in ``out``; return all records of the grid.

    Each record holds the run's configuration (``KEY_FIELDS``) and what it measured:
    ``trainable_params``, ``total_params``, ``metric_name``, ``metric``, ``train_seconds``,
    ``device``, ``profile``, ``version``, ``history`` (loss per step, metric per epoch) and,
    with ``keep_adapters``, ``adapter_path`` (a PEFT-format adapter folder next to the results
    file).
    """
    from tqdm.auto import tqdm

    spec, out, done, budget, (train_ds, eval_ds) = prepare_sweep(task, out)
    runs = list(runs)  # a sized list: the progress bar shows the total
    records: list[dict[str, Any]] = []
    bar = tqdm(runs, desc=f"sweep {spec.name}", unit="run", disable=not progress)
    for run in bar:
        config = _full_config(spec, run, n_examples(train_ds), budget)
        key = run_key(config)
        if key in done:
            records.append(done[key])
            continue
        bar.set_postfix_str(describe_run(config))
        record, files = train_one(spec, config, train_ds, eval_ds, keep_adapters, device)
        write_record(out, record, files)
        done[key] = record
        records.append(record)
    return records


def prepare_sweep(
    task: str | TaskSpec, out: str | os.PathLike
) -> tuple[TaskSpec, Path, dict[str, dict[str, Any]], dict[str, Any], tuple[Any, Any]]:
    """What every sweep runner starts from: the task's spec, the results path, the runs already
    in it (by ``run_key``), the profile's budget and the (train, eval) data. Every run of a grid
    sees the same data (only initialisation and order vary with the seed); even a finished sweep
    loads it, since the training-set size is part of each key."""
    spec = task_spec(task) if isinstance(task, str) else task
    out = Path(out)
    done = {run_key(r): r for r in read_results(out, repair=True)}
    return spec, out, done, spec.budget(), spec.load()


def train_one(
    spec: TaskSpec,
    config: dict[str, Any],
    train_ds: Any,
    eval_ds: Any,
    keep_adapters: bool = False,
    device: Any = None,
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Train one run of a sweep (``config``: a grid entry completed by ``_full_config``) and
    return its record and, with ``keep_adapters``, the files of its LoRA adapter (name → bytes;
    ``write_record`` puts them next to the results file). Writes nothing itself, so it can run
    on another machine: the serial runner and the Ray workers (``lora_edu.cluster``) share it."""
    from lora_edu import __version__

    budget = spec.budget()
    kwargs = {
        "method": config["method"],
        "epochs": config["epochs"],
        "batch_size": budget["batch_size"],
        "seed": config["seed"],
        "lr": config["lr"],
        "progress": False,
        "device": device,
        **spec.extra,
    }
    if "model" in budget:  # the full profile's base-size encoder
        kwargs["model"] = budget["model"]
    if config["method"] == "lora":
        kwargs["lora"] = lora_config(config)
    # A run's head trains at its method's rate unless the run says otherwise: explicitly None, so
    # that no ``finetune_*`` default (``defaults.TASK_DEFAULTS``) changes what a run means.
    kwargs["head_lr"] = config.get("head_lr")
    if config.get("warmup_ratio") is not None:
        kwargs["warmup_ratio"] = config["warmup_ratio"]
    if config.get("also_train"):
        kwargs["also_train"] = tuple(config["also_train"])
    kwargs |= {f: config[f] for f in spec.run_fields if config.get(f) is not None}
    started = time.perf_counter()
    result = spec.finetune(train_ds, eval_ds, return_model=keep_adapters, **kwargs)
    model = None
    if keep_adapters:
        result, model = result
    record = {
        **{k: v for k, v in result.items() if k != "history"},
        # Learning curves (loss per step, metric per epoch) without the per-step lr schedule.
        "history": {k: v for k, v in result.get("history", {}).items() if k != "lr"},
        **config,
        "metric_name": result.get("metric_name", spec.metric_name),
        "wall_seconds": round(time.perf_counter() - started, 3),
        "profile": profile(),
        "version": __version__,
    }
    files: dict[str, bytes] = {}
    if model is not None and config["method"] == "lora":
        import tempfile

        from lora_edu.lora import save_adapter

        with tempfile.TemporaryDirectory() as tmp:
            save_adapter(model, tmp)
            files = {
                p.relative_to(tmp).as_posix(): p.read_bytes()
                for p in sorted(Path(tmp).rglob("*"))
                if p.is_file()
            }
    return record, files


def lora_config(run: dict[str, Any]) -> LoRAConfig:
    """The ``LoRAConfig`` of one LoRA run of a grid (or record): the one object that carries its
    settings to ``finetune_*`` and ``apply_lora``."""
    from lora_edu.lora import LoRAConfig

    return LoRAConfig(
        target_modules=_targets_argument(run["target_modules"]),
        r=run["r"],
        alpha=run["alpha"],
        init=run["init"],
        use_rslora=run["use_rslora"],
        variant=run.get("variant"),
        quantize=run.get("quantize"),
    )


def _targets_argument(targets: Sequence[str]) -> str | tuple[str, ...]:
    """A run's target list as ``apply_lora`` reads it: ``["all-linear"]`` is the keyword."""
    from lora_edu.lora import ALL_LINEAR

    return ALL_LINEAR if [t.lower() for t in targets] == [ALL_LINEAR] else tuple(targets)

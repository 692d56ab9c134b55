"""What the repository keeps of the sweeps, and where: the results file of each task and
preset (``results_file``: ``data/results/TASK-PROFILE.jsonl``, a temporary folder in ``smoke``)
and the float16 adapters of chosen runs (``kept_adapters``: ``data/adapters/TASK-PROFILE/<run>``,
each folder named from every field of its run's key and holding the run's record).

    (path,) = kept_adapters("sst2", [run])     # trains the run first where it is missing

Imports ``config``, ``grid``, the runner and the task registry.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lora_edu.config import adapters_dir, profile, results_dir
from lora_edu.grid import KEY_FIELDS, adapter_slug, key_value
from lora_edu.runner import run_sweep
from lora_edu.tasks.registry import preset_file

_SMOKE_DIR: Path | None = None


def _smoke_dir() -> Path:
    global _SMOKE_DIR
    if _SMOKE_DIR is None:
        _SMOKE_DIR = Path(tempfile.mkdtemp(prefix="lora_edu-smoke-"))
    return _SMOKE_DIR


def results_file(task: str, presets: str | Sequence[str] = ()) -> Path:
    """The results file of ``task`` at the active profile: ``data/results/TASK-PROFILE.jsonl``
    (see ``config.results_dir``), or in ``smoke`` a file in a temporary folder made once per
    process. A preset that its task registered with a file of its own
    (``tasks.registry.register_presets(files=...)``) keeps its results there
    (``variants-default.jsonl``)."""
    names = [presets] if isinstance(presets, str) else list(presets)
    own = {preset_file(task, name) for name in names}
    if len(own) > 1:
        raise ValueError(
            f"presets {names} of {task} keep their results in different files ({sorted(own)}); "
            "run them one at a time"
        )
    stem = own.pop() if own else task
    if profile() == "smoke":
        return _smoke_dir() / "results" / f"{stem}-smoke.jsonl"
    return results_dir() / f"{stem}-{profile()}.jsonl"


#: The key fields a kept adapter's folder leaves out of its name: the folder above names the
#: task and the profile, whose budget fixes the training-set size and the number of epochs.
_FOLDER_FIELDS = ("task", "n_train", "epochs")


def _as_kept(task: str, run: dict[str, Any]) -> dict[str, Any]:
    """A grid entry or record of ``task`` as a kept adapter names it: without the fields the
    folder above fixes, and with its learning rate resolved (a run without one trains at the
    task's default, as ``run_sweep`` does)."""
    from lora_edu.tasks import task_spec

    kept = {k: v for k, v in run.items() if k not in _FOLDER_FIELDS}
    if kept.get("lr") is None and kept["method"] != "none":
        kept["lr"] = task_spec(task).default_lr[kept["method"]]
    return kept


def kept_adapter_dir(task: str, run: dict[str, Any]) -> Path:
    """Where the float16 adapter of one LoRA run of ``task`` is kept at the active profile:
    ``data/adapters/TASK-PROFILE/<run>`` (see ``config.adapters_dir``; a temporary folder in
    ``smoke``), ``<run>`` named from every field of the run's key (``grid.adapter_slug``), so
    that runs differing only in their learning rate, initialisation or loop settings never
    share a folder."""
    home = _smoke_dir() / "adapters" if profile() == "smoke" else adapters_dir()
    return home / f"{task}-{profile()}" / adapter_slug(_as_kept(task, run))


def _check_kept_record(task: str, run: dict[str, Any], path: Path) -> None:
    """Refuse a kept adapter whose recorded run (``run.json``) is not ``run``: a folder written
    under an older naming, or copied by hand, must not stand in for another run."""
    record_path = path / RUN_RECORD
    if not record_path.exists():
        raise ValueError(f"{path} has no {RUN_RECORD}: cannot tell which run trained it")
    recorded, wanted = _as_kept(task, kept_run_record(path)), _as_kept(task, run)
    differ = [
        f"{k}: kept {key_value(recorded, k)!r}, wanted {key_value(wanted, k)!r}"
        for k in KEY_FIELDS
        if k not in _FOLDER_FIELDS and key_value(recorded, k) != key_value(wanted, k)
    ]
    if differ:
        raise ValueError(
            f"the adapter kept in {path} was trained by another run ({'; '.join(differ)}); "
            "remove that folder to train this run's adapter"
        )


def kept_adapters(
    task: str, runs: Sequence[dict[str, Any]], *, progress: bool = True
) -> list[Path]:
    """The kept adapter folders of these LoRA runs (PEFT format, float16), training the missing
    ones first at the profile's budget (``run_sweep`` with ``keep_adapters``; their records go
    to a scratch file, not to the results). A kept folder whose recorded run differs from the
    one asked for raises instead of being returned."""
    from lora_edu.lora import ADAPTER_WEIGHTS

    not_lora = [run for run in runs if run["method"] != "lora"]
    if not_lora:
        raise ValueError(f"only LoRA runs have adapters, got {not_lora[0]}")
    missing = [run for run in runs if not (kept_adapter_dir(task, run) / ADAPTER_WEIGHTS).exists()]
    if missing:
        scratch = Path(tempfile.mkdtemp(prefix="lora_edu-adapters-")) / f"{task}.jsonl"
        for record in run_sweep(task, missing, scratch, keep_adapters=True, progress=progress):
            to_float16(
                scratch.parent / record["adapter_path"], kept_adapter_dir(task, record), record
            )
    paths = [kept_adapter_dir(task, run) for run in runs]
    for run, path in zip(runs, paths, strict=True):
        _check_kept_record(task, run, path)
    return paths


#: The record of the run that trained a kept adapter, saved next to it (what it measured).
RUN_RECORD = "run.json"


def to_float16(source: str | Path, dest: str | Path, record: dict[str, Any] | None = None) -> Path:
    """Copy a PEFT-format adapter folder with its floating-point tensors stored as float16;
    with ``record``, also write the run's record (without its learning curves) as ``run.json``."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    from lora_edu.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS

    source, dest = Path(source), Path(dest)
    tensors = load_file(source / ADAPTER_WEIGHTS)
    half = {k: t.half() if t.is_floating_point() else t for k, t in tensors.items()}
    dest.mkdir(parents=True, exist_ok=True)
    save_file(half, dest / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    shutil.copyfile(source / ADAPTER_CONFIG, dest / ADAPTER_CONFIG)
    if record is not None:
        kept = {k: v for k, v in record.items() if k not in ("history", "adapter_path")}
        (dest / RUN_RECORD).write_text(json.dumps(kept, indent=2, sort_keys=True) + "\n")
    return dest


def kept_run_record(path: str | Path) -> dict[str, Any]:
    """The record of the run that trained the kept adapter in ``path`` (``run.json``)."""
    import json

    return json.loads((Path(path) / RUN_RECORD).read_text())

"""The same sweep on many cores, GPUs or machines: each run of the grid as a Ray task.

    lora-edu sweep --task sst2 --preset headline --workers 4          # a local Ray instance
    lora-edu sweep --task sst2 --preset headline --address ray://head:10001   # a cluster

``run_sweep_ray`` is ``sweep.run_sweep`` with the training spread over Ray workers; the serial
runner stays the default and is what it calls for each run (``sweep.train_one``), so a
distributed sweep gives the same records. What stays on the driver, the process you started:

- **One writer.** Only the driver reads and appends to the results file, one finished run at a
  time as it arrives, so the file stays valid and resumable whatever the workers do; an
  interrupted sweep resumes with the same command. Kept adapters come back as bytes and the
  driver writes them too.
- **The data.** The driver loads the task's datasets once (through the usual order:
  ``LORA_EDU_DATA``, ``data/``, the Hub) and ships them, copied into memory, through Ray's object
  store: workers need no dataset files and no ``LORA_EDU_DATA``. They do need the same Python
  environment (``lora_edu``, torch and the offline model packages, which hold MiniLM and
  SmolLM2), as every Ray cluster does; the TinyViT of the ``vit`` task is pretrained (or read
  from ``LORA_EDU_CACHE``) by each worker, deterministically.
- **Failures.** A run that raises is tried once more; if it fails again, its configuration and
  error go to ``<results>.failed`` (JSON lines) and the other runs go on. The next sweep tries it
  again, since it is not in the results.

Ray is an optional dependency (``pip install "lora-edu[cluster]"``), imported only here.
"""

from __future__ import annotations

import json
import os
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lora_edu.config import profile
from lora_edu.grid import describe_run as _describe
from lora_edu.grid import run_key
from lora_edu.runner import _full_config, n_examples, prepare_sweep, train_one
from lora_edu.store import append_record, write_record
from lora_edu.tasks.registry import TaskSpec

INSTALL_HINT = 'pip install "lora-edu[cluster]"  (or: pip install "ray>=2.9")'

#: Environment variables every worker gets from the driver: the run size and the offline switches.
#: ``LORA_EDU_DATA`` is deliberately not among them (the data travel through the object store).
WORKER_ENV = (
    "LORA_EDU_PROFILE",
    "LORA_EDU_DEVICE",
    "LORA_EDU_CACHE",
    "HF_HUB_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "TOKENIZERS_PARALLELISM",
)


def import_ray() -> Any:
    """``ray``, or an ImportError that says what to install."""
    try:
        import ray
    except ImportError:
        raise ImportError(
            f"--workers and --address run the sweep on Ray, which is not installed: {INSTALL_HINT}"
        ) from None
    return ray


def start_ray(workers: int | None = None, address: str | None = None) -> Any:
    """Connect to Ray: an already running session is reused; ``address`` (or ``RAY_ADDRESS``)
    attaches to a cluster; otherwise a local instance starts with ``workers`` CPUs (default: all
    cores) and the visible GPUs."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is not None:
        ray.init(address=address, log_to_driver=False)
        return ray
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be ≥ 1, got {workers}")
    # A busy laptop can take longer than Ray's default 30 s to start the node's agents.
    os.environ.setdefault("RAY_agent_register_timeout_ms", "120000")
    settings = {"num_cpus": workers or os.cpu_count(), "num_gpus": _visible_gpus(),
                "include_dashboard": False, "log_to_driver": False}  # fmt: skip
    try:
        ray.init(**settings)
    except Exception:  # noqa: BLE001 -- Ray reports a slow start as a bare Exception
        # On a loaded machine the node's helper processes can start too slowly the first time;
        # their imports are cached for the second try.
        ray.shutdown()
        try:
            ray.init(**settings)
        except Exception as err:  # noqa: BLE001
            ray.shutdown()
            raise RuntimeError(
                f"the local Ray instance did not start ({err}); on a busy machine try again, "
                "or run the sweep without --workers (the serial runner)"
            ) from err
    return ray


def _visible_gpus() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def in_memory(obj: Any) -> Any:
    """``obj`` with every ``datasets.Dataset`` in it (alone or in a tuple, list or dict) copied
    into memory, so that pickling it carries the rows themselves: a dataset read from the Hub
    cache is memory-mapped, and would pickle as a path that a worker on another machine lacks."""
    import datasets

    if isinstance(obj, datasets.Dataset):
        bars = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()  # no "Flattening the indices" bar per split
        try:
            return obj.flatten_indices(keep_in_memory=True)
        finally:
            if bars:
                datasets.enable_progress_bars()
    if isinstance(obj, (tuple, list)):
        return type(obj)(in_memory(x) for x in obj)
    if isinstance(obj, dict):
        return {k: in_memory(v) for k, v in obj.items()}
    return obj


def _train_remote(
    spec: TaskSpec, config: dict[str, Any], data: tuple[Any, Any], keep_adapters: bool,
    threads: int,
) -> tuple[dict[str, Any], dict[str, bytes]]:  # fmt: skip
    # Runs on a worker. Ray limits a 1-CPU worker's torch to 1 thread; give it what it asked for.
    import torch

    torch.set_num_threads(max(1, threads))
    train_ds, eval_ds = data
    return train_one(spec, config, train_ds, eval_ds, keep_adapters)


def run_sweep_ray(
    task: str | TaskSpec,
    runs: Iterable[dict[str, Any]],
    out: str | os.PathLike,
    *,
    workers: int | None = None,
    address: str | None = None,
    cpus_per_run: float = 1,
    gpus_per_run: float | None = None,
    keep_adapters: bool = False,
    progress: bool = True,
    retries: int = 1,
) -> list[dict[str, Any]]:
    """Run every configuration of ``runs`` not yet in ``out`` as Ray tasks; return all records of
    the grid in grid order, as ``sweep.run_sweep`` does.

    ``workers``: CPUs of the local Ray instance started when none is running and no ``address``
    (or ``RAY_ADDRESS``) is given. Each run asks for ``cpus_per_run`` CPUs (its torch threads)
    and ``gpus_per_run`` GPUs: default 1 when the Ray instance has GPUs, else 0; a fraction such
    as 0.25 lets four small runs share one large GPU. A run that raises is tried ``retries`` more
    times, then recorded in ``<out>.failed`` with its error.
    """
    from tqdm.auto import tqdm

    ray = start_ray(workers, address)
    spec, out, done, budget, (train_ds, eval_ds) = prepare_sweep(task, out)
    configs = [_full_config(spec, run, n_examples(train_ds), budget) for run in runs]
    todo = {}
    for config in configs:
        todo.setdefault(run_key(config), config)
    todo = {key: config for key, config in todo.items() if key not in done}
    if gpus_per_run is None:
        gpus_per_run = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
    env = {k: os.environ[k] for k in WORKER_ENV if k in os.environ}
    env["LORA_EDU_PROFILE"] = profile()
    remote = ray.remote(_train_remote).options(
        num_cpus=cpus_per_run,
        num_gpus=gpus_per_run,
        max_retries=0,  # retries of a run that raises are counted here, not by Ray
        runtime_env={"env_vars": env},
    )
    data = ray.put((in_memory(train_ds), in_memory(eval_ds))) if todo else None
    threads = max(1, int(cpus_per_run))

    def submit(key: str) -> Any:
        return remote.remote(spec, todo[key], data, keep_adapters, threads)

    pending = {submit(key): (key, 0) for key in todo}
    failed = 0
    bar = tqdm(total=len(todo), desc=f"sweep {spec.name} (ray)", unit="run", disable=not progress)
    while pending:
        (ref,), _ = ray.wait(list(pending), num_returns=1)
        key, attempt = pending.pop(ref)
        try:
            record, files = ray.get(ref)
        except Exception as err:  # noqa: BLE001 -- any failure of a run is reported, not fatal
            if attempt < retries:
                pending[submit(key)] = (key, attempt + 1)
                continue
            _record_failure(out, todo[key], err, attempt + 1)
            failed += 1
            bar.update()
            continue
        write_record(out, record, files)  # the one writer: the driver
        done[key] = record
        bar.set_postfix_str(_describe(todo[key]))
        bar.update()
    bar.close()
    if failed:
        print(f"{failed} run(s) failed {retries + 1} times; their errors are in {out}.failed")
    return [done[run_key(c)] for c in configs if run_key(c) in done]


def _record_failure(out: Path, config: dict[str, Any], err: BaseException, attempts: int) -> None:
    cause = getattr(err, "cause", None) or err  # Ray wraps the worker's exception
    message = f"{type(cause).__name__}: {cause}"
    append_record(
        Path(f"{out}.failed"),
        {
            **config,
            "error": message,
            "attempts": attempts,
            "traceback": "".join(traceback.format_exception(err))[-4000:],
        },
    )


def read_failures(out: str | os.PathLike) -> list[dict[str, Any]]:
    """The failed runs recorded next to a results file (``<out>.failed``), oldest first."""
    path = Path(f"{out}.failed")
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]

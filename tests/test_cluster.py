"""Sweeps on Ray: the same records as the serial runner, one writer, retries, data shipped."""

from __future__ import annotations

import os
import pickle
import sys

import pytest

from lora_edu import cluster, sweep
from lora_edu.data import find_dataset


def test_without_ray_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ImportError, match=r'pip install "lora-edu\[cluster\]"'):
        cluster.import_ray()


def test_cli_workers_without_ray_names_the_extra(monkeypatch, tmp_path, capsys):
    from lora_edu.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setattr(sweep, "task_spec", lambda name: pytest.fail("must not load the task"))
    with pytest.raises(ImportError, match="lora-edu\\[cluster\\]"):
        main(["sweep", "--task", "sst2", "--workers", "2", "--out", str(tmp_path / "r.jsonl")])


def test_in_memory_copies_memory_mapped_rows(tmp_path):
    import datasets
    from datasets.table import InMemoryTable, MemoryMappedTable

    datasets.Dataset.from_dict({"x": list(range(50))}).save_to_disk(tmp_path / "ds")
    mapped = datasets.load_from_disk(tmp_path / "ds").shuffle(seed=0).select(range(10))
    assert isinstance(mapped.data, MemoryMappedTable)  # would pickle as a path on this disk
    train, (a, b) = cluster.in_memory((mapped, (mapped, "not a dataset")))
    assert isinstance(train.data, InMemoryTable) and b == "not a dataset"
    assert train["x"] == mapped["x"] == a["x"]
    copy = pickle.loads(pickle.dumps(train))
    assert copy["x"] == mapped["x"]
    assert str(tmp_path) not in repr(copy.data)


# ------------------------------------------------------------------ a local Ray instance


@pytest.fixture(scope="module")
def ray_two_workers():
    """A local Ray instance with 2 CPUs whose workers do not have LORA_EDU_DATA: they are started
    from an environment without it (Ray's workers inherit the environment at ``ray.init``)."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    saved = os.environ.pop("LORA_EDU_DATA", None)
    try:
        cluster.start_ray(workers=2)
    finally:
        if saved is not None:
            os.environ["LORA_EDU_DATA"] = saved
    yield ray
    ray.shutdown()


def _probe_env():
    return os.environ.get("LORA_EDU_DATA")


def _fake_task(log_dir):
    """Instant 'training'; seed 1 always fails. Each call leaves a file, to count attempts."""

    def finetune(train, eval, *, return_model=False, **kwargs):
        attempt = len(list(log_dir.glob(f"seed{kwargs['seed']}-*")))
        (log_dir / f"seed{kwargs['seed']}-{attempt}").touch()
        if kwargs["seed"] == 1:
            raise RuntimeError("this run always fails")
        return {"metric": 0.5 + 0.01 * kwargs["seed"], "metric_name": "accuracy",
                "history": {"loss": [1.0]}}  # fmt: skip

    return sweep.TaskSpec(
        name="fake",
        metric_name="accuracy",
        load=lambda: (list(range(8)), list(range(4))),
        finetune=finetune,
        budget=lambda: {"n_train": 8, "n_eval": 4, "epochs": 1, "batch_size": 4},
    )


def test_a_failing_run_is_retried_once_then_recorded_and_the_others_finish(
    ray_two_workers, tmp_path
):
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers lack this module
    logs = tmp_path / "calls"
    logs.mkdir()
    out = tmp_path / "fake.jsonl"
    grid = sweep.make_grid(["head"], seeds=[0, 1, 2])
    records = cluster.run_sweep_ray(_fake_task(logs), grid, out, progress=False)
    assert [r["seed"] for r in records] == [0, 2]
    assert sorted(p.name for p in logs.iterdir()) == ["seed0-0", "seed1-0", "seed1-1", "seed2-0"]
    (failure,) = cluster.read_failures(out)
    assert failure["seed"] == 1 and failure["attempts"] == 2
    assert failure["error"] == "RuntimeError: this run always fails"
    assert len(sweep.read_results(out)) == 2
    # The next sweep skips the finished runs and tries the failed one again.
    cluster.run_sweep_ray(_fake_task(logs), grid, out, progress=False)
    assert len(list(logs.glob("seed0-*"))) == 1 and len(list(logs.glob("seed1-*"))) == 4


@pytest.mark.skipif(find_dataset("sst2") is None, reason="SST-2 files not found (LORA_EDU_DATA)")
def test_distributed_sweep_equals_the_serial_one(ray_two_workers, tmp_path, monkeypatch):
    """Real SST-2 fine-tuning at the smoke budget, on two workers that have no LORA_EDU_DATA."""
    monkeypatch.setenv("LORA_EDU_PROFILE", "smoke")
    assert ray_two_workers.get(ray_two_workers.remote(_probe_env).remote()) is None
    grid = sweep.make_grid(["lora", "head"], ranks=[4], seeds=[0, 1])
    distributed = cluster.run_sweep_ray(
        "sst2", grid, tmp_path / "ray.jsonl", keep_adapters=True, progress=False
    )
    serial = sweep.run_sweep("sst2", grid, tmp_path / "serial.jsonl", progress=False)
    assert len(distributed) == len(serial) == 4
    for d, s in zip(distributed, serial, strict=True):
        assert sweep.run_key(d) == sweep.run_key(s)
        assert d["metric"] == s["metric"]
        assert d["history"]["loss"] == pytest.approx(s["history"]["loss"], rel=1e-4)
    # The adapters came back from the workers and were written by the driver, beside the file.
    lora = [r for r in distributed if r["method"] == "lora"]
    for rec in lora:
        assert (tmp_path / rec["adapter_path"] / "adapter_model.safetensors").is_file()
    # Resuming writes nothing new.
    lines = (tmp_path / "ray.jsonl").read_text().splitlines()
    again = cluster.run_sweep_ray("sst2", grid, tmp_path / "ray.jsonl", progress=False)
    assert (tmp_path / "ray.jsonl").read_text().splitlines() == lines
    assert [r["metric"] for r in again] == [r["metric"] for r in distributed]


@pytest.mark.skipif(find_dataset("sst2") is None, reason="SST-2 files not found (LORA_EDU_DATA)")
def test_the_cli_sends_a_sweep_to_ray(ray_two_workers, tmp_path, monkeypatch, capsys):
    from lora_edu.cli import main

    monkeypatch.setenv("LORA_EDU_PROFILE", "smoke")
    out = tmp_path / "cli.jsonl"
    assert main(["sweep", "--task", "sst2", "--methods", "head", "--seeds", "0,1", "--workers", "2",
                 "--quiet", "--out", str(out)]) == 0  # fmt: skip
    assert "2 runs in" in capsys.readouterr().out
    assert sorted(r["seed"] for r in sweep.read_results(out)) == [0, 1]

"""The measured test times: recorded by a pytest run, written into the README by a command."""

from __future__ import annotations

import json
from types import SimpleNamespace

from lora_edu import cli
from lora_edu.timings import (
    TIMINGS_END,
    TIMINGS_START,
    TimingsPlugin,
    notebook_times,
    quickstart_paragraph,
)


def _report(nodeid: str, when: str, duration: float, outcome: str = "passed"):
    return SimpleNamespace(nodeid=nodeid, when=when, duration=duration, outcome=outcome)


def test_the_plugin_adds_up_each_notebook_and_the_unit_tests(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_EDU_PROFILE", "smoke")
    path = tmp_path / "timings.json"
    path.write_text(json.dumps({"default": {"kept": True}}))
    plugin = TimingsPlugin(path)
    for report in (
        _report("notebooks/01_a.ipynb::Cell 0", "setup", 2.0),
        _report("notebooks/01_a.ipynb::Cell 0", "call", 1.5),
        _report("notebooks/01_a.ipynb::Cell 1", "call", 0.5, "failed"),
        _report("notebooks/02_b.ipynb::Cell 0", "call", 4.0),
        _report("tests/test_x.py::test_one", "call", 3.0),
        _report("tests/test_x.py::test_two", "setup", 0.0, "skipped"),
    ):
        plugin.pytest_runtest_logreport(report)
    plugin.pytest_sessionfinish(None, 1)
    timings = json.loads(path.read_text())
    assert timings["default"] == {"kept": True}  # the other profile's measurement stays
    smoke = timings["smoke"]
    assert smoke["notebooks"] == {"01_a.ipynb": 4.0, "02_b.ipynb": 4.0}
    assert smoke["unit_tests_seconds"] == 3.0
    assert smoke["outcomes"] == {"failed": 1, "passed": 3, "skipped": 1}
    assert smoke["command"] == "python -m pytest" and smoke["exit_status"] == 1


def test_a_merged_run_retimes_only_its_notebooks(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_EDU_PROFILE", "default")
    path = tmp_path / "timings.json"
    path.write_text(json.dumps(_timings()))
    plugin = TimingsPlugin(path, merge=True)
    plugin.pytest_runtest_logreport(_report("notebooks/02_b.ipynb::Cell 0", "call", 90.0))
    plugin.pytest_runtest_logreport(_report("notebooks/03_c.ipynb::Cell 0", "call", 20.0))
    plugin.pytest_sessionfinish(None, 0)
    entry = json.loads(path.read_text())["default"]
    assert entry["notebooks"] == {"01_a.ipynb": 8.0, "02_b.ipynb": 90.0, "03_c.ipynb": 20.0}
    assert entry["total_seconds"] == 1800.0 - 1790.0 + 110.0
    assert set(entry["remeasured"]) == {"02_b.ipynb", "03_c.ipynb"}
    assert entry["commit"] == "abc"  # the whole run's own commit stays
    TimingsPlugin(path).pytest_sessionfinish(None, 0)  # without merge: replaced whole
    assert "remeasured" not in json.loads(path.read_text())["default"]


def _timings() -> dict:
    run = {"command": "python -m pytest", "machine": "2 CPU cores (x), no GPU", "commit": "abc",
           "date": "2026-12-07", "total_seconds": 600.0, "unit_tests_seconds": 200.0,
           "notebooks": {"01_a.ipynb": 30.0, "02_b.ipynb": 370.0},
           "outcomes": {"passed": 900, "skipped": 2}}  # fmt: skip
    default = {**run, "command": "LORA_EDU_PROFILE=default python -m pytest notebooks",
               "unit_tests_seconds": 0.0, "total_seconds": 1800.0,
               "notebooks": {"01_a.ipynb": 8.0, "02_b.ipynb": 1790.0}}  # fmt: skip
    return {"smoke": run, "default": default}


def test_the_readme_figures_come_from_the_measurements(tmp_path):
    text = quickstart_paragraph(_timings())
    assert (
        "`python -m pytest` took **10.0 min** (the unit tests 3.3 min, the 2 notebooks 6.7 min;"
        in text
    )
    assert (
        "900 passed, 2 skipped) on 2026-12-07 at commit `abc`, on 2 CPU cores (x), no GPU." in text
    )
    assert "`LORA_EDU_PROFILE=default python -m pytest notebooks` took **30.0 min** (the 2" in text
    table = (
        "| # | notebook | what | time (smoke / default) |\n|---|---|---|---|\n"
        "| 01 | [A](notebooks/01_a.ipynb) | a, b | 1 s / 2 s |\n"
        "| 02 | [B](notebooks/02_b.ipynb) | c | old |\n"
        "| 03 | [C](notebooks/03_c.ipynb) | d | old |\n"
    )
    rows = notebook_times(table, _timings()).splitlines()
    assert rows[2] == "| 01 | [A](notebooks/01_a.ipynb) | a, b | 30 s / 8 s |"
    assert rows[3] == "| 02 | [B](notebooks/02_b.ipynb) | c | 6.2 min / 29.8 min |"
    assert rows[4] == "| 03 | [C](notebooks/03_c.ipynb) | d | not timed / not timed |"


def test_the_timings_command_writes_the_readme(tmp_path, capsys):
    file = tmp_path / "timings.json"
    file.write_text(json.dumps(_timings()))
    readme = tmp_path / "README.md"
    readme.write_text(
        f"# x\n\n{TIMINGS_START}\n{TIMINGS_END}\n\n| 01 | [A](notebooks/01_a.ipynb) | a | ? |\n"
    )
    assert cli.main(["timings", "--file", str(file), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert (
        "took **10.0 min**" in text
        and "| 01 | [A](notebooks/01_a.ipynb) | a | 30 s / 8 s |" in text
    )
    assert cli.main(["timings", "--file", str(file), "--readme", str(readme)]) == 0
    assert "already up to date" in capsys.readouterr().out

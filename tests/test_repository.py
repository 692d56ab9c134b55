"""The repository keeps its promises: every notebook is in the README's table of contents and is
committed without outputs, and the README holds the two quickstart commands CI runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 5


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_in_readme_table_of_contents(notebook):
    assert f"(notebooks/{notebook.name})" in (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(notebook):
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    dirty = [
        i
        for i, c in enumerate(cells)
        if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))
    ]
    assert dirty == [], f"cells {dirty} carry outputs; clear them before committing"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_opens_with_objectives_and_ends_with_exercises(notebook):
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    text = ["".join(c["source"]).lower() for c in cells if c["cell_type"] == "markdown"]
    assert any("objective" in t or "you will" in t for t in text[:3]), "no learning objectives"
    assert any("exercise" in t for t in text), "no exercises"


def _lora_edu_imports(notebook: Path) -> list[tuple[int, str, str]]:
    """(cell, module, name) for every ``from lora_edu... import name`` in the notebook's code."""
    import ast

    found = []
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    for i, cell in enumerate(cells):
        if cell["cell_type"] != "code":
            continue
        source = "\n".join(
            line for line in "".join(cell["source"]).splitlines() if not line.startswith(("%", "!"))
        )
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lora_edu"):
                found += [(i, node.module, alias.name) for alias in node.names]
    return found


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_every_name_a_notebook_imports_from_the_package_exists(notebook):
    """A renamed function breaks a notebook only when nbval reaches it; this finds it at once."""
    import importlib.util

    def exists(module: str, name: str) -> bool:
        mod = importlib.import_module(module)
        if hasattr(mod, name):
            return True
        return hasattr(mod, "__path__") and importlib.util.find_spec(f"{module}.{name}") is not None

    missing = [
        f"cell {i}: from {module} import {name}"
        for i, module, name in _lora_edu_imports(notebook)
        if not exists(module, name)
    ]
    assert missing == [], f"{notebook.name} imports names the package does not have: {missing}"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_no_notebook_uses_a_private_name_of_the_package(notebook):
    """A learner meets the lesson, not the bookkeeping: notebooks use the package's public names
    only (no ``from lora_edu... import _x``, no ``module._x``)."""
    private = [f"cell {i}: {module}.{name}" for i, module, name in _lora_edu_imports(notebook)
               if name.startswith("_")]  # fmt: skip
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    modules = r"(?:le|lora_edu|sweep|experiments|train|models|diffusion|tasks|plots|stats)"
    for i, cell in enumerate(cells):
        if cell["cell_type"] == "code":
            for name in re.findall(rf"\b{modules}\.(_[A-Za-z]\w*)", "".join(cell["source"])):
                private.append(f"cell {i}: .{name}")
    assert private == [], f"{notebook.name} uses private names: {private}"


#: The modules that read, match or keep results: a notebook reads its results through
#: ``lora_edu.results(task)`` and at most a handful of these names.
RESULT_MODULES = {
    f"lora_edu.{m}"
    for m in ("experiments", "sweep", "store", "report", "study_report", "task_results", "kept",
              "pilots", "budget_report", "runner", "grid", "presets")
}  # fmt: skip
MAX_RESULT_NAMES = 5


def _result_names(notebook: Path) -> set[str]:
    """The result-reading names a notebook uses: imported from ``RESULT_MODULES``, or read as
    attributes of one of them imported as a module (``from lora_edu import experiments``)."""
    names = {
        f"{module}.{name}"
        for _, module, name in _lora_edu_imports(notebook)
        if module in RESULT_MODULES or f"{module}.{name}" in RESULT_MODULES
    }
    as_modules = {n.rsplit(".", 1)[1] for n in names if n in RESULT_MODULES}
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    for cell in cells:
        if cell["cell_type"] == "code":
            for module in as_modules:
                for attr in re.findall(rf"\b{module}\.(\w+)", "".join(cell["source"])):
                    names.add(f"lora_edu.{module}.{attr}")
    return {n for n in names if n not in RESULT_MODULES}


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_a_notebook_reads_results_through_a_handful_of_names(notebook):
    names = _result_names(notebook)
    assert len(names) <= MAX_RESULT_NAMES, f"{notebook.name}: {sorted(names)}"


def test_the_result_name_count_sees_module_imports(tmp_path):
    fake = tmp_path / "99_fake.ipynb"
    code = (
        "from lora_edu import experiments\nfrom lora_edu.sweep import aggregate\n"
        "experiments.select(r)\nexperiments.run_presets('sst2', 'x')\nexperiments.select(q)"
    )
    fake.write_text(json.dumps({"cells": [{"cell_type": "code", "source": [code]}]}))
    assert _result_names(fake) == {
        "lora_edu.experiments.select", "lora_edu.experiments.run_presets", "lora_edu.sweep.aggregate"
    }  # fmt: skip


def _block(readme: str, marker: str) -> list[str]:
    """The lines of the code block that follows ``<!-- quickstart:MARKER -->``."""
    after = readme.split(f"<!-- quickstart:{marker} -->\n```bash\n", 1)[1]
    return after.split("\n```", 1)[0].splitlines()


def test_readme_has_the_two_quickstart_commands():
    """The commands .ci/run reads: the install block's `pip install` line, the test block's
    `pytest` line; the test comes before `jupyter lab`, which would block the terminal."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert 'pip install -e ".[test]"' in _block(readme, "install")
    assert _block(readme, "test") == ["python -m pytest"]
    quickstart = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    assert quickstart.index("python -m pytest") < quickstart.index("jupyter lab")
    assert "lora-edu download" in quickstart and "LORA_EDU_DATA" in quickstart


def test_readme_images_exist_and_are_small():
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README.read_text(encoding="utf-8"))
    assert images, "the README shows the headline figures"
    for image in images:
        path = ROOT / image
        assert path.is_file(), f"README shows {image}, which does not exist"
        assert path.stat().st_size < 400_000, f"{image} is {path.stat().st_size:,} bytes"


def test_kept_adapters_are_small_float16_peft_folders():
    from safetensors import safe_open

    folders = sorted(p.parent for p in (ROOT / "data" / "adapters").rglob("adapter_config.json"))
    total = 0
    for folder in folders:
        weights = folder / "adapter_model.safetensors"
        size = sum(f.stat().st_size for f in folder.iterdir())
        assert size < 2 * 2**20, f"{folder} is {size / 2**20:.2f} MB (limit 2 MB)"
        total += size
        with safe_open(weights, "pt") as f:
            dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
        assert dtypes == {"F16"}, f"{weights}: {dtypes}"
        assert (folder / "run.json").is_file(), f"{folder} lacks the record of its run"
    assert total < 10 * 2**20, f"data/adapters holds {total / 2**20:.1f} MB (limit 10 MB)"


def test_readme_order_and_small_results_tables():
    """What it is → Quickstart → Notebooks → Results → Performance → Command line → profiles,
    data, GPU; the README stays short, and the results are small tables (one per study, without
    a timing column) in docs/results.md, which the README links."""
    readme = README.read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 300, f"README is {len(readme.splitlines())} lines"
    headings = re.findall(r"^## (.+)$", readme, flags=re.M)
    order = ["Quickstart", "Notebooks", "Results", "Performance", "Command line"]
    assert [h for h in headings if h in order] == order
    rest = headings[headings.index("Command line") + 1 :]
    assert any("Profiles" in h for h in rest) and "Data and models" in rest
    assert any("GPU" in h for h in rest)
    assert "(docs/results.md)" in readme and "<!-- results:start" not in readme
    results = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    results = results.split("<!-- results:start", 1)[1].split("<!-- results:end -->", 1)[0]
    tables = [t for t in re.split(r"\n\s*\n", results) if t.lstrip().startswith("|")]
    assert len(tables) >= 5, "one table per study"
    assert max(len(t.strip().splitlines()) - 2 for t in tables) <= 12, "a table a reader can scan"
    assert "train s" not in results and "seconds" not in results


def test_the_results_page_is_the_report_of_the_committed_results(tmp_path, monkeypatch):
    """docs/results.md's tables are what `lora-edu report --readme docs/results.md` makes of the
    committed results: regenerating them changes nothing."""
    import shutil

    from lora_edu import cli

    monkeypatch.setenv("LORA_EDU_PROFILE", "default")
    monkeypatch.delenv("LORA_EDU_RESULTS", raising=False)
    page = tmp_path / "results.md"
    shutil.copy(ROOT / "docs" / "results.md", page)
    files = sorted(str(p) for p in (ROOT / "data" / "results").glob("*-default.jsonl"))
    assert cli.main(["report", *files, "--readme", str(page)]) == 0
    assert page.read_text(encoding="utf-8") == (ROOT / "docs" / "results.md").read_text(
        encoding="utf-8"
    ), "docs/results.md is out of date: run `lora-edu report --readme docs/results.md`"


def test_the_readme_timings_are_the_measured_ones(tmp_path):
    """The Quickstart's test times and the notebook table's time column are generated from the
    committed measurements (docs/timings.json, written by a timed pytest run): every notebook was
    timed in both profiles, both runs passed, and regenerating the README changes nothing."""
    import os
    import shutil

    from lora_edu.timings import read_timings, update_readme_timings

    if os.environ.get("LORA_EDU_TIMINGS"):
        pytest.skip("this run is measuring the timings it would check (LORA_EDU_TIMINGS is set)")
    timings = read_timings()
    names = {p.name for p in NOTEBOOKS}
    for profile in ("smoke", "default"):
        assert set(timings[profile]["notebooks"]) == names, profile
        assert timings[profile]["outcomes"].get("failed", 0) == 0, profile
    readme = tmp_path / "README.md"
    shutil.copy(README, readme)
    assert update_readme_timings(readme, timings) is False, "run `lora-edu timings --readme`"
    assert "not timed" not in readme.read_text(encoding="utf-8")


def _in_progress() -> set[str]:
    """The results files whose data/README.md row says they are still being produced
    ("**In progress**"): every line is a run of the command, but runs may still be missing."""
    text = (ROOT / "data" / "README.md").read_text(encoding="utf-8")
    return set(re.findall(r"^\| `([\w-]+-default\.jsonl)` \| \*\*In progress\*\*", text, re.M))


def _provenance() -> dict[str, list[tuple[str, str]]]:
    """data/README.md's results table: file name → the (task, preset) pairs of its commands."""
    from lora_edu.sweep import COMPRESSION_RANKS

    rows = {}
    for line in (ROOT / "data" / "README.md").read_text(encoding="utf-8").splitlines():
        match = re.match(r"^\| `([\w-]+-default\.jsonl)` \|.*\| (.*lora-edu sweep.*) \|$", line)
        if not match:
            continue
        pairs = []
        for task, presets in re.findall(r"--task (\S+) --preset ([\w,-]+)", match.group(2)):
            tasks = (
                [task.replace("$r", str(r)) for r in COMPRESSION_RANKS] if "$" in task else [task]
            )
            pairs += [(t, p) for t in tasks for p in presets.split(",")]
        rows[match.group(1)] = pairs
    return rows


def test_every_committed_results_file_has_a_provenance_row():
    files = {p.name for p in (ROOT / "data" / "results").glob("*-default.jsonl")}
    assert files and files == set(_provenance())


@pytest.mark.parametrize("name", sorted(_provenance()))
def test_each_provenance_command_reproduces_exactly_its_file(name, monkeypatch):
    """Every line of a committed results file is a run of its documented command(s), and every
    run of those commands is in the file: one configuration is one set of records everywhere."""
    from lora_edu import experiments
    from lora_edu.sweep import _full_config, key_value, read_results, task_spec
    from lora_edu.tasks.distillation import DISTILL_FIELDS

    monkeypatch.setenv("LORA_EDU_PROFILE", "default")
    monkeypatch.delenv("LORA_EDU_RESULTS", raising=False)
    fields = ("task", "method", "r", "alpha", "seed", "lr", "init", "use_rslora", "variant",
              "quantize")  # fmt: skip

    def key(rec):
        loop = (key_value(rec, f) for f in ("head_lr", "warmup_ratio"))  # a default = left out
        also = tuple(rec.get("also_train") or ())  # e.g. LoRA + the position embedding
        distill = (key_value(rec, f) for f in DISTILL_FIELDS)  # the distillation study's arms
        return (*(rec.get(f) for f in fields), tuple(rec.get("target_modules") or ()), *loop, also,
                *distill)  # fmt: skip

    wanted = set()
    for task, preset in _provenance()[name]:
        assert experiments.results_file(task, preset).name == name, (task, preset)
        spec, budget = task_spec(task), task_spec(task).budget()
        for run in experiments.preset_grid(task, preset):
            wanted.add(key(_full_config(spec, run, 0, budget)))
    found = [key(rec) for rec in read_results(ROOT / "data" / "results" / name)]
    assert len(found) == len(set(found)), "a run is in the file twice"
    assert set(found) - wanted == set(), "lines no documented command produces"
    if name not in _in_progress():
        assert wanted - set(found) == set(), "runs of the command missing from the file"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_in_the_chinese_readme(notebook):
    assert f"(notebooks/{notebook.name})" in (ROOT / "README.zh-CN.md").read_text(encoding="utf-8")


def test_guide_map_covers_the_outline_and_links_real_notebooks():
    text = (ROOT / "docs" / "guide_map.md").read_text(encoding="utf-8")
    sections = re.findall(r"^\| (\d+(?:\.\d+)*) \| ", text, flags=re.M)
    for wanted in ("1", "2", "3", "4.1", "4.2", "4.3", "5", "6.1.1", "6.1.2", "6.1.3", "6.2.1",
                   "6.2.2", "6.2.3", "6.3.1", "7", "8", "9"):  # fmt: skip
        assert wanted in sections, wanted
    links = re.findall(r"\(\.\./notebooks/([\w.]+\.ipynb)\)", text)
    assert links and all((ROOT / "notebooks" / name).is_file() for name in links)
    glossary = text.split("## Glossary")[1]
    for term in ("低秩分解", "秩", "缩放因子", "合并", "适配器", "全量微调"):
        assert f"| {term} |" in glossary, term
    assert "(docs/guide_map.md)" in README.read_text(encoding="utf-8")


def test_the_performance_tables_are_the_committed_benchmark_results(tmp_path):
    """README's ratio table and docs/performance.md's full tables are generated from the
    committed `lora-edu bench --json` files: regenerating them changes nothing."""
    import shutil

    from lora_edu.bench import BENCH_RESULTS, write_committed_tables

    for path in BENCH_RESULTS.values():
        assert (ROOT / path).is_file(), path
    root = tmp_path / "repo"
    (root / "docs" / "bench").mkdir(parents=True)
    for path in (*BENCH_RESULTS.values(), "docs/performance.md", "README.md"):
        shutil.copy(ROOT / path, root / path)
    assert write_committed_tables(root / "README.md", root) == []


def test_every_picture_the_readme_shows_is_committed_and_small():
    """The README's images (the paper figures, the style adapters' samples) are committed PNGs
    under 300 kB, so the README renders on a code host and the repository stays light."""
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", README.read_text(encoding="utf-8"))
    assert "notebooks/figures/style_adapters.png" in pictures
    for picture in pictures:
        path = ROOT / picture
        assert path.is_file(), picture
        assert path.stat().st_size < 300_000, (picture, path.stat().st_size)

"""The repository keeps its promises: every notebook is in the README's table of contents and is
committed without outputs, and the README holds the two quickstart commands CI runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
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


def test_readme_has_the_two_quickstart_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert '<!-- quickstart:install -->\n```bash\npip install -e ".[test]"' in readme
    assert "<!-- quickstart:test -->\n```bash\npython -m pytest\n```" in readme

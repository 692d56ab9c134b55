"""The student version: the notebooks without their solutions, still runnable."""

from __future__ import annotations

import json

import nbformat
import pytest

from lora_edu import cli
from lora_edu.lecture import SOLUTION_TAG, notebooks, student_version

NOTEBOOKS = notebooks()


def _tagged(cell) -> bool:
    return SOLUTION_TAG in cell.get("metadata", {}).get("tags", [])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_solutions_are_tagged_and_come_last(path):
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    tagged = [i for i, c in enumerate(cells) if _tagged(c)]
    assert tagged, "no solution cells tagged"
    first = tagged[0]
    assert tagged == list(range(first, len(cells))), "solution cells must be the notebook's tail"
    assert "".join(cells[first]["source"]).startswith("## Solutions")
    before = ["".join(c["source"]) for c in cells[:first] if c["cell_type"] == "markdown"]
    assert "exercise" in before[-1].lower(), "the exercises come right before the solutions"
    assert not any("## Solutions" in text for text in before)


def test_student_version_keeps_everything_up_to_the_exercises(tmp_path, capsys):
    assert cli.main(["student-version", str(tmp_path)]) == 0
    assert f"{len(NOTEBOOKS)} student notebooks" in capsys.readouterr().out
    for path in NOTEBOOKS:
        original = json.loads(path.read_text(encoding="utf-8"))["cells"]
        student = nbformat.read(tmp_path / path.name, as_version=4).cells
        kept = [c for c in original if not _tagged(c)]
        # exactly the untagged cells, in order: a prefix of the notebook that nbval runs
        assert ["".join(c["source"]) for c in kept] == [c.source for c in student]
        assert kept == original[: len(kept)]
        assert not any("Solutions" in c.source for c in student)
        assert "exercise" in student[-1].source.lower() or any(
            "exercise" in c.source.lower() for c in student[-2:]
        )


def test_student_version_refuses_an_untagged_notebook(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("## Exercises\n\n1. ...")])
    path = tmp_path / "01_untagged.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(ValueError, match="no cell tagged 'solution'"):
        student_version(tmp_path / "out", [path])


def test_a_student_notebook_runs_to_its_exercises(tmp_path, monkeypatch):
    """The first notebook's student version, executed (smoke profile)."""
    from nbclient import NotebookClient

    monkeypatch.setenv("LORA_EDU_PROFILE", "smoke")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    (written,) = student_version(tmp_path, [NOTEBOOKS[0]])
    nb = nbformat.read(written, as_version=4)
    NotebookClient(nb, timeout=600, resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]
    assert errors == []
    assert nb.cells[-1].cell_type == "markdown" and "exercise" in nb.cells[-1].source.lower()


def _chromium() -> str | None:
    import shutil

    return (
        shutil.which("chromium")
        or shutil.which("chromium-browser")
        or shutil.which("google-chrome")
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_cell_has_slide_metadata(path):
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    kinds = [c["metadata"].get("slideshow", {}).get("slide_type") for c in cells]
    assert kinds[0] == "slide" and None not in kinds
    for cell, kind in zip(cells, kinds, strict=True):
        assert (kind == "skip") == _tagged(cell)  # solutions are skipped, nothing else
        if (
            cell["cell_type"] == "markdown"
            and "".join(cell["source"]).startswith("## ")
            and not _tagged(cell)
        ):
            assert kind == "slide"


def _needs_the_lecture_extra() -> None:
    """Slides inline MathJax from ``sphinx-mathjax-offline`` (the ``lecture`` extra, in
    ``test``): a learner's ``.[learn]`` install skips these tests and says why."""
    from importlib import metadata

    try:
        metadata.distribution("sphinx-mathjax-offline")
    except metadata.PackageNotFoundError:
        pytest.skip('slides need the lecture extra: pip install "lora-edu[lecture]"')


def test_slides_are_one_self_contained_file(tmp_path, capsys):
    import re

    _needs_the_lecture_extra()
    out = tmp_path / "deck.html"
    assert cli.main(["slides", str(NOTEBOOKS[0]), "--out", str(out)]) == 0
    assert "self-contained" in capsys.readouterr().out
    html = out.read_text(encoding="utf-8")
    assert not re.findall(r"<script[^>]*\bsrc=", html)  # every script inlined
    assert not re.findall(r"<link[^>]*\bhref=", html)  # every style inlined
    assert "Reveal.initialize" in html and "window.MathJax" in html
    cells = json.loads(NOTEBOOKS[0].read_text(encoding="utf-8"))["cells"]
    slides = sum(c["metadata"]["slideshow"]["slide_type"] == "slide" for c in cells)
    assert html.count("<section") >= slides


def test_slides_typeset_their_equations_in_a_browser_offline(tmp_path, require_browser):
    """Headless chromium, no network: MathJax (inlined) turns the TeX into SVG."""
    _needs_the_lecture_extra()
    require_browser(_chromium() is not None, "no chromium installed (Debian: apt install chromium)")
    import subprocess

    from lora_edu.lecture import slides

    deck = slides(NOTEBOOKS[0], tmp_path / "deck.html")
    dom = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--proxy-server=127.0.0.1:9",
         "--virtual-time-budget=20000", "--dump-dom", deck.as_uri()],
        capture_output=True, text=True, timeout=180, check=True,
    ).stdout  # fmt: skip
    assert dom.count("<mjx-container") > 20  # equations typeset
    assert "\\frac{\\alpha}{r}" not in dom  # and no raw TeX left behind
    assert 'class="reveal' in dom and "present" in dom  # reveal.js initialised

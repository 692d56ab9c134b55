"""Lecture material from the notebooks: a student version without the solutions.

Every notebook ends with its exercises, then a ``## Solutions`` cell and the solution cells, all
tagged ``solution`` in their cell metadata (the instructor version is the notebook as it is). The
student version drops the tagged cells with nbconvert's ``TagRemovePreprocessor``: what remains
is the notebook up to and including its exercises, unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from lora_edu.config import REPO_ROOT

#: The cell tag that marks a solution (and the ``## Solutions`` heading).
SOLUTION_TAG = "solution"
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"


def notebooks(folder: str | os.PathLike = NOTEBOOKS_DIR) -> list[Path]:
    """The numbered notebooks of ``folder`` (``01_…ipynb`` …), in order."""
    found = sorted(Path(folder).glob("[0-9][0-9]_*.ipynb"))
    if not found:
        raise FileNotFoundError(f"no numbered notebooks (01_*.ipynb, …) in {folder}")
    return found


def student_version(
    out: str | os.PathLike, sources: Sequence[str | os.PathLike] | None = None
) -> list[Path]:
    """Write each notebook of ``sources`` (default: all of ``notebooks/``) into ``out`` without
    its cells tagged ``solution``; returns the written paths. A notebook with no tagged cell is
    refused: handing it out would hand out its solutions."""
    import nbformat
    from nbconvert.preprocessors import TagRemovePreprocessor

    remover = TagRemovePreprocessor(remove_cell_tags={SOLUTION_TAG}, enabled=True)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for source in sources or notebooks():
        source = Path(source)
        nb = nbformat.read(source, as_version=4)
        if not any(SOLUTION_TAG in c.metadata.get("tags", []) for c in nb.cells):
            raise ValueError(
                f"{source.name} has no cell tagged {SOLUTION_TAG!r}: its solutions would be "
                "handed out; tag them (cell metadata 'tags') first"
            )
        nb, _ = remover.preprocess(nb, {})
        target = out / source.name
        nbformat.write(nb, target)
        written.append(target)
    return written


#: Where the slide template and the vendored reveal.js live.
PACKAGE_DIR = Path(__file__).resolve().parent
REVEAL_DIR = PACKAGE_DIR / "static" / "reveal"
TEMPLATES_DIR = PACKAGE_DIR / "templates"
_PLACEHOLDER = "lora-edu-reveal"


def _mathjax_svg() -> str:
    """MathJax 3's TeX-to-SVG bundle from the ``sphinx-mathjax-offline`` package (no fonts to
    fetch: SVG output draws the glyphs itself)."""
    from importlib import metadata

    try:
        dist = metadata.distribution("sphinx-mathjax-offline")
    except metadata.PackageNotFoundError:
        raise ImportError(
            "slides render equations with MathJax from the sphinx-mathjax-offline package; "
            'install it with: pip install "lora-edu[lecture]"'
        ) from None
    path = next(f for f in dist.files or [] if str(f).endswith("mathjax/tex-svg-full.js"))
    return Path(dist.locate_file(path)).read_text(encoding="utf-8")


def slides(
    notebook: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    execute: bool = False,
    timeout: int = 1800,
) -> Path:
    """A self-contained reveal.js slide deck of ``notebook`` (one HTML file, every script and
    style inlined, so it opens offline): its cells' slide metadata (``slideshow.slide_type``:
    sections are slides, other cells sub-slides, solutions skipped) decide the layout. With
    ``execute``, the notebook is run first in the active profile so its figures are on the
    slides. Written to ``out`` (default: the notebook's name with ``.slides.html`` in the current
    folder); returns the path."""
    import re

    import nbformat
    from nbconvert import SlidesExporter

    notebook = Path(notebook)
    nb = nbformat.read(notebook, as_version=4)
    if execute:
        from nbclient import NotebookClient

        NotebookClient(
            nb, timeout=timeout, resources={"metadata": {"path": str(notebook.parent)}}
        ).execute()
    exporter = SlidesExporter(
        template_name="lora_slides",
        extra_template_basedirs=[str(TEMPLATES_DIR)],
        reveal_url_prefix=_PLACEHOLDER,
        reveal_theme="white",
    )
    inline = {
        "reveal": (REVEAL_DIR / "reveal.js").read_text(encoding="utf-8"),
        "notes": (REVEAL_DIR / "notes.js").read_text(encoding="utf-8"),
        "mathjax": _mathjax_svg(),
    }
    html, _ = exporter.from_notebook_node(nb, resources={"lora_inline": inline})
    for name, css in (("dist/reveal.css", "reveal.css"), ("dist/theme/[a-z]+.css", "white.css")):
        style = (REVEAL_DIR / css).read_text(encoding="utf-8")
        link = re.compile(rf'<link[^>]*href="{_PLACEHOLDER}/{name}"[^>]*>')
        html, found = link.subn(lambda _, style=style: f"<style>\n{style}\n</style>", html)
        if found != 1:
            raise RuntimeError(
                f"the slide template no longer links {name}; update lora_edu.lecture"
            )
    out = Path(out) if out is not None else Path(notebook.stem + ".slides.html")
    out.write_text(html, encoding="utf-8")
    return out

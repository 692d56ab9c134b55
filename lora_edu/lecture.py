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

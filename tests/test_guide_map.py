"""The guide map (docs/guide_map.md) against the guide's outline.

The outline of the Chinese guide lives outside the repository, in ``../shared/guide_outline.md``
(the folder beside the checkout). Every numbered chapter (``##``), section (``###``) and
subsection (``####``) of it must have a row ``| 1.2.3 | <the guide's wording> | ... |`` in the map,
with the Chinese wording character for character, and every row must name the notebook that
teaches it (a link to ``../notebooks/NN_name.ipynb``) or say "not yet".
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAP = ROOT / "docs" / "guide_map.md"
OUTLINE = Path(__file__).resolve().parents[2] / "shared" / "guide_outline.md"

HEADING = re.compile(r"^(#{2,4})[ \t]+(\d+(?:\.\d+)*)\.?[ \t]+(.+?)\s*$")
ROW = re.compile(r"^\|\s*(\d+(?:\.\d+)*)\s*\|(.*)\|\s*$")
LINK = re.compile(r"\[([^\]]*)\]\(\.\./notebooks/([^)\s]+\.ipynb)\)")


def outline_headings() -> dict[str, str]:
    """Number -> the guide's wording, for every numbered ##/###/#### heading of the outline.

    The outline file lists the headings once at the top and repeats some of them in the text that
    follows; the first occurrence is the outline's wording."""
    if not OUTLINE.is_file():
        pytest.skip(f"the guide's outline is not here: {OUTLINE} (it lives beside the checkout)")
    headings: dict[str, str] = {}
    for line in OUTLINE.read_text(encoding="utf-8").splitlines():
        match = HEADING.match(line)
        if match:
            headings.setdefault(match.group(2), match.group(3).strip())
    return headings


def map_rows() -> list[tuple[str, list[str]]]:
    """Every table row of the map whose first cell is a section number: (number, other cells)."""
    rows = []
    for line in MAP.read_text(encoding="utf-8").splitlines():
        match = ROW.match(line)
        if match:
            rows.append((match.group(1), [cell.strip() for cell in match.group(2).split("|")]))
    return rows


@cache
def notebook_sections(name: str) -> frozenset[str]:
    """The numbers of a notebook's numbered markdown headings: ``## N.``, or ``## 9.1`` (the FAQ
    uses the guide's own question numbers)."""
    notebook = json.loads((ROOT / "notebooks" / name).read_text(encoding="utf-8"))
    numbers = set()
    for cell in notebook["cells"]:
        if cell["cell_type"] == "markdown":
            numbers.update(re.findall(r"^## (\d+)\. ", "".join(cell["source"]), flags=re.M))
            numbers.update(re.findall(r"^## (\d+\.\d+) ", "".join(cell["source"]), flags=re.M))
    return frozenset(numbers)


def test_the_outline_has_chapters_sections_and_subsections():
    headings = outline_headings()
    depths = {number.count(".") for number in headings}
    assert depths == {0, 1, 2}, f"expected chapters, sections and subsections, got depths {depths}"


def test_every_heading_of_the_outline_is_in_the_map_in_the_guides_wording():
    headings = outline_headings()
    rows = map_rows()
    in_map: dict[str, list[str]] = {}
    for number, cells in rows:
        in_map.setdefault(number, []).append(cells[0] if cells else "")
    problems = []
    for number, wording in headings.items():
        if number not in in_map:
            problems.append(f"{number} {wording}: missing from the map")
            continue
        for found in in_map[number]:
            if found != wording:
                problems.append(f"{number}: the map says {found!r}, the outline {wording!r}")
    for number in in_map:
        if number not in headings:
            problems.append(f"{number}: in the map but not a heading of the outline")
    assert not problems, (
        f"{len(problems)} problems (the outline has {len(headings)} headings):\n"
        + "\n".join(problems)
    )


def test_every_row_names_a_notebook_or_says_not_yet():
    rows = map_rows()
    assert rows, "the map has no numbered rows"
    problems = []
    for number, cells in rows:
        if len(cells) != 3:
            problems.append(
                f"{number}: {len(cells) + 1} cells, expected 4 (§, 中文, English, where)"
            )
            continue
        where = cells[2]
        if not LINK.search(where) and "not yet" not in where:
            problems.append(f"{number}: neither a notebook link nor 'not yet': {where!r}")
        if not cells[1]:
            problems.append(f"{number}: no English heading")
    assert not problems, "\n".join(problems)


def test_every_notebook_link_points_at_a_notebook_and_its_sections_exist():
    text = MAP.read_text(encoding="utf-8")
    links = list(LINK.finditer(text))
    assert links, "the map links no notebook"
    problems = []
    for number, cells in map_rows():
        where = cells[-1] if cells else ""
        found = list(LINK.finditer(where))
        for i, link in enumerate(found):
            label, name = link.groups()
            if not (ROOT / "notebooks" / name).is_file():
                problems.append(f"{number}: {name} does not exist")
                continue
            if label != name[:2]:
                problems.append(f"{number}: the link to {name} is labelled {label!r}")
            # The § numbers written after a link (up to the next link) are that notebook's sections.
            end = found[i + 1].start() if i + 1 < len(found) else len(where)
            for section in re.findall(r"§(\d+(?:\.\d+)?)", where[link.end() : end]):
                if section not in notebook_sections(name):
                    problems.append(f"{number}: {name} has no section {section}")
    for link in links:  # links outside the numbered rows too
        if not (ROOT / "notebooks" / link.group(2)).is_file():
            problems.append(f"{link.group(2)} does not exist")
    assert not problems, "\n".join(sorted(set(problems)))

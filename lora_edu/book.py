"""The offline HTML book: the README, the guide map and every notebook, executed, in one site.

``build_book`` stages the pages into a Sphinx source folder (the README becomes the front page,
notebook links keep working because the notebooks sit beside it under ``notebooks/``), writes a
``conf.py`` and runs Sphinx with ``myst-nb`` (notebooks executed in the chosen profile, each
result cached by ``jupyter-cache`` so a rebuild re-runs only the notebooks that changed),
``sphinx-book-theme`` and ``sphinx-mathjax-offline`` (MathJax served from the book's own
``_static``, not a CDN). Every package comes from PyPI; nothing is fetched while building or
reading.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from lora_edu.config import REPO_ROOT

#: What goes into the book besides the notebooks: (source in the repository, page in the book).
PAGES = (
    ("README.md", "index.md"),
    ("README.zh-CN.md", "README.zh-CN.md"),
    ("docs/guide_map.md", "docs/guide_map.md"),
    ("docs/performance.md", "docs/performance.md"),
    ("docs/results.md", "docs/results.md"),
    ("docs/scaling.md", "docs/scaling.md"),
    ("docs/developers.md", "docs/developers.md"),
    ("data/README.md", "data/README.md"),
)

CONF = """\
project = "lora_edu"
author = "lora_edu contributors"
extensions = ["myst_nb", "sphinx-mathjax-offline"]
html_theme = "sphinx_book_theme"
html_title = "lora_edu: learn LoRA by building it"
html_theme_options = {{"show_toc_level": 2, "use_download_button": True}}
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3
nb_execution_mode = "{mode}"
nb_execution_cache_path = {cache!r}
nb_execution_timeout = {timeout}
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True
nb_ipywidgets_js = {{}}  # widget views need require.js and a CDN: a static page shows the figures
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
suppress_warnings = ["myst.xref_missing", "myst.header"]
"""


def _matches(path: Path, selector: str) -> bool:
    """Whether ``selector`` picks the notebook ``path``: its name or a prefix of it ("01")."""
    selector = selector.strip()
    return bool(selector) and path.name.startswith(selector)


def _notebooks(selected: Sequence[str] | None) -> list[Path]:
    """The notebooks the selectors pick (names or number prefixes), in order; all without any.
    Raises ValueError naming every selector that picks no notebook."""
    from lora_edu.lecture import notebooks

    found = notebooks()
    if not selected:
        return found
    unmatched = [s for s in selected if not any(_matches(p, s) for p in found)]
    if unmatched:
        raise ValueError(
            f"no notebook matches {', '.join(map(repr, unmatched))}; expected names or number "
            f"prefixes ('01') of: {', '.join(p.name for p in found)}"
        )
    return [p for p in found if any(_matches(p, s) for s in selected)]


def _index(readme: str, notebooks: list[Path]) -> str:
    """The README as the front page, with a hidden table of contents that Sphinx needs."""
    toc = "\n".join(f"notebooks/{p.stem}" for p in notebooks)
    pages = "\n".join(page.removesuffix(".md") for _, page in PAGES[1:])
    return (
        f"{readme}\n\n```{{toctree}}\n:hidden:\n:caption: Notebooks\n\n{toc}\n```\n\n"
        f"```{{toctree}}\n:hidden:\n:caption: Guide, data and development\n\n{pages}\n```\n"
    )


@contextmanager
def _profile(name: str) -> Iterator[None]:
    old = os.environ.get("LORA_EDU_PROFILE")
    os.environ["LORA_EDU_PROFILE"] = name
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("LORA_EDU_PROFILE", None)
        else:
            os.environ["LORA_EDU_PROFILE"] = old


def build_book(
    out: str | os.PathLike = "book",
    *,
    profile: str = "smoke",
    notebooks: Sequence[str] | None = None,
    execute: bool = True,
    timeout: int = 1800,
    quiet: bool = False,
) -> Path:
    """Build the book into ``out/html`` and return its front page. Notebooks are executed in
    ``profile`` (``smoke``: seconds each; ``default``: minutes) unless ``execute`` is False;
    results are cached in ``out/.jupyter_cache`` so a second build re-executes only the
    notebooks whose code changed. ``notebooks`` picks some by name or number prefix ("01")."""
    from sphinx.cmd.build import build_main

    from lora_edu.config import PROFILES

    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {', '.join(PROFILES)}")
    out = Path(out).resolve()
    source = out / "source"
    if source.exists():
        shutil.rmtree(source)
    (source / "notebooks").mkdir(parents=True)
    chosen = _notebooks(notebooks)
    for path in chosen:
        shutil.copy2(path, source / "notebooks" / path.name)
    figures = REPO_ROOT / "notebooks" / "figures"
    if figures.is_dir():
        shutil.copytree(figures, source / "notebooks" / "figures")
    for repo_path, page in PAGES:
        target = source / page
        target.parent.mkdir(parents=True, exist_ok=True)
        text = (REPO_ROOT / repo_path).read_text(encoding="utf-8")
        if page == "index.md":
            text = _index(text, chosen)
        target.write_text(text, encoding="utf-8")
    (source / "conf.py").write_text(
        CONF.format(
            mode="cache" if execute else "off",
            cache=str(out / ".jupyter_cache"),
            timeout=timeout,
        ),
        encoding="utf-8",
    )
    args = ["-b", "html", str(source), str(out / "html"), "-j", "1"]
    if quiet:
        args.append("-q")
    with _profile(profile):
        status = build_main(args)
    if status != 0:
        raise RuntimeError(f"sphinx-build failed with status {status}; see the messages above")
    return out / "html" / "index.html"

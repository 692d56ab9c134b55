"""The offline book: built by Sphinx from the README and the notebooks (executed), then opened in
a real headless browser with the network cut off. Set LORA_EDU_BOOK to a built book's folder
(``lora-edu book --out DIR``) to check that one; otherwise a two-notebook book is built here."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from lora_edu import cli

pytest.importorskip("myst_nb", reason="the book needs myst-nb (pip install sphinx myst-nb ...)")

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
#: The notebooks of the small book built when no LORA_EDU_BOOK is given: one with equations and
#: figures from numpy, one that reads the committed results.
SMALL = ("01", "02")


@pytest.fixture(scope="module")
def book(tmp_path_factory) -> Path:
    given = os.environ.get("LORA_EDU_BOOK")
    if given:
        return Path(given) / "html"
    out = tmp_path_factory.mktemp("book")
    assert cli.main(["book", "--out", str(out), "--profile", "smoke", "--notebooks", *SMALL]) == 0
    return out / "html"


def _pages(book: Path) -> list[Path]:
    pages = sorted((book / "notebooks").glob("*.html"))
    assert pages, f"no notebook pages in {book}"
    return pages


def test_the_book_has_every_page_and_fetches_nothing_remote(book):
    assert (book / "index.html").is_file() and (book / "search.html").is_file()
    assert (book / "docs" / "guide_map.html").is_file() and (book / "README.zh-CN.html").is_file()
    assert (book / "_static" / "mathjax" / "tex-chtml.js").is_file()  # MathJax served locally
    for page in [book / "index.html", *_pages(book)]:
        html = page.read_text(encoding="utf-8")
        remote = re.findall(r'<(?:script|link|img)[^>]*(?:src|href)="(https?://[^"]+)"', html)
        assert remote == [], f"{page.name} loads {remote[:3]}"
    index = (book / "index.html").read_text(encoding="utf-8")
    for page in _pages(book):  # the README's notebook links point at the book's pages
        assert f'href="notebooks/{page.name}' in index, page.name
    assert any("<img" in p.read_text(encoding="utf-8") for p in _pages(book))  # executed: figures


def test_a_browser_offline_sees_figures_and_typeset_equations(book, tmp_path, require_browser):
    require_browser(
        BROWSER is not None and DRIVER is not None,
        "needs chromium and chromedriver (Debian: apt install chromium chromium-driver)",
    )
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException

    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900",
                 "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>"):  # fmt: skip
        options.add_argument(flag)  # every network request goes to a dead proxy: offline
    service = webdriver.ChromeService(executable_path=DRIVER)
    driver = webdriver.Chrome(options=options, service=service)
    shots = Path(os.environ.get("LORA_EDU_BOOK_SHOTS", tmp_path))
    driver.set_script_timeout(60)
    figures = typeset_pages = 0
    try:
        for i, page in enumerate(_pages(book)):
            # Sphinx loads MathJax only on pages with math: waiting for it elsewhere never ends.
            has_math = 'class="math' in page.read_text(encoding="utf-8")
            driver.get(page.as_uri())
            if has_math:
                try:
                    driver.execute_async_script(
                        "const done = arguments[arguments.length - 1];"
                        "const wait = () => (window.MathJax && MathJax.startup && MathJax.startup.promise)"
                        "  ? MathJax.startup.promise.then(() => done(true)) : setTimeout(wait, 100);"
                        "wait();"
                    )
                except TimeoutException:
                    pytest.fail(f"{page.name}: MathJax did not finish typesetting within 60 s")
            sizes = driver.execute_script(
                "return [...document.querySelectorAll('main img')].map(i => [i.complete, i.naturalWidth]);"
            )
            assert all(ok and width > 0 for ok, width in sizes), (page.name, sizes)
            figures += len(sizes)
            typeset = driver.execute_script(
                "return document.querySelectorAll('mjx-container').length"
            )
            text = driver.execute_script("return document.querySelector('main').innerText")
            assert typeset > 0 or not has_math, page.name
            typeset_pages += typeset > 0
            assert "\\frac" not in text and "$$" not in text, page.name  # no raw TeX shown
            if i < 2:
                driver.save_screenshot(str(shots / f"book-{page.stem}.png"))
    finally:
        driver.quit()
    assert typeset_pages > 0  # equations reach the reader somewhere
    assert figures > 0  # the executed notebooks' figures are on their pages, and they load

"""The command line's argument types: each checks one value while ``lora-edu``'s command line
is parsed and, when it is wrong, raises an argparse error (exit status 2) naming the value and what
is accepted — before any data is read or any model is built.

ARCHITECTURE notes: used by ``cli`` only; imports ``sweep`` and ``figures`` on use (the README
markers they own).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def _csv(item: Callable[[str], Any], what: str) -> Callable[[str], list]:
    """An argparse type: a non-empty comma-separated list of ``what``, each item checked and
    converted by ``item`` (an argparse type itself)."""

    def parse(text: str) -> list:
        items = [v.strip() for v in text.split(",") if v.strip()]
        if not items:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list of {what}, got {text!r}"
            )
        try:
            return [item(v) for v in items]
        except argparse.ArgumentTypeError as err:
            raise argparse.ArgumentTypeError(
                f"{err} in {text!r}" if len(items) > 1 else str(err)
            ) from None

    return parse


def _name(text: str) -> str:
    """An argparse type: any name (a layer, a preset), checked where it is used."""
    return text


def _whole(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number ≥ ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number ≥ {minimum}, got {text!r}")
        return value

    return parse


def _real(minimum: float, *, strict: bool) -> Callable[[str], float]:
    """An argparse type: a finite number above ``minimum`` (``strict``) or at least it."""
    bound = f"{'>' if strict else '≥'} {minimum:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and (value > minimum if strict else value >= minimum)):
            raise argparse.ArgumentTypeError(f"expected a finite number {bound}, got {text!r}")
        return value

    return parse


def _choice(accepted: Sequence[str]) -> Callable[[str], str]:
    """An argparse type: one of ``accepted`` (``choices=`` for the items of a list)."""

    def parse(text: str) -> str:
        if text not in accepted:
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(accepted)}, got {text!r}")
        return text

    return parse


def _alpha(text: str) -> float | str:
    """An alpha: a number (``16``) or a multiple of the rank (``r``, ``2r``), finite and > 0."""
    text = text.strip()
    multiple = text.endswith("r")
    factor = (text[:-1] or "1") if multiple else text
    try:
        value = float(factor)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(
            f"expected an alpha > 0, a number (16) or a multiple of the rank (r, 2r), got {text!r}"
        )
    return f"{factor}r" if multiple else value


def _variant(text: str) -> str:
    from lora_edu.variants import VARIANTS  # torch: imported only when --variant is given

    return _choice(list(VARIANTS))(text)


def _dataset(text: str) -> str:
    from lora_edu.data import DATASET_FILES

    return _choice([*DATASET_FILES, "smollm2"])(text)


def _existing_file(what: str, suffix: str | None = None) -> Callable[[str], str]:
    """An argparse type: the path of an existing file (ending in ``suffix``), ``what`` saying
    in plain English what it should be."""

    def parse(text: str) -> str:
        path = Path(text)
        if not path.exists():
            problem = "does not exist"
        elif not path.is_file():
            problem = "is not a file"
        elif suffix is not None and path.suffix != suffix:
            problem = f"does not end in {suffix}"
        else:
            return text
        raise argparse.ArgumentTypeError(f"{text!r} {problem}; expected {what}")

    return parse


def _out_folder(text: str) -> str:
    """An argparse type: a folder to write into (created when missing), not an existing file."""
    if Path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(
            f"{text!r} is a file; expected a folder to write into (created when missing)"
        )
    return text


def _out_file(text: str) -> str:
    """An argparse type: a file to write, not an existing folder."""
    if Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder; expected a file to write")
    return text


def _adapter_folder(text: str) -> str:
    """An argparse type: a PEFT-format adapter folder (one holding ``adapter_config.json``)."""
    if not (Path(text) / "adapter_config.json").is_file():
        raise argparse.ArgumentTypeError(
            f"{text!r} holds no adapter_config.json; expected a PEFT-format adapter folder "
            "(as `lora-edu sweep --keep-adapters` or save_adapter writes)"
        )
    return text


def _readme(text: str, start: str, end: str) -> str:
    """``text`` if it is an existing file holding the ``start`` and ``end`` marker lines."""
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text!r} is not a file; expected an existing README")
    content = path.read_text(encoding="utf-8")
    if start not in content or end not in content:
        raise argparse.ArgumentTypeError(
            f"{text!r} has no generated-section markers; expected a README holding the two "
            f"lines\n{start}\n{end}\nwhere the table should go"
        )
    return text


def _results_readme(text: str) -> str:
    from lora_edu.sweep import REPORT_END, REPORT_START

    return _readme(text, REPORT_START, REPORT_END)


def _verdicts_readme(text: str) -> str:
    from lora_edu.figures import VERDICTS_END, VERDICTS_START

    return _readme(text, VERDICTS_START, VERDICTS_END)

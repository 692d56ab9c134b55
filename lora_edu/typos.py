"""Typing errors, made on purpose: the character noise that notebook 06 puts into SST-2's
validation sentences at test time, to see whether a classifier's accuracy survives it.

    add_typos("a gripping, funny film", rate=0.1, seed=3)   # e.g. 'a gripipng, funny fjlm'
    typo_texts(sentences, rate=0.1)                          # one noisy copy of each, fixed seeds

Each letter, with probability ``rate``, gets one of the four mistakes a typist makes (the kinds
of Belinkov & Bisk 2018, "Synthetic and natural noise both break neural machine translation"):
swapped with the letter after it, dropped, doubled, or replaced by a neighbour on a QWERTY
keyboard. Everything that is not a letter stays. Imports numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: The kinds of typo, in the order ``add_typos`` draws them (uniformly).
TYPO_KINDS = ("swap", "drop", "double", "neighbour")

_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
#: Each lower-case letter's left and right neighbours on its QWERTY row.
KEYBOARD_NEIGHBOURS: dict[str, str] = {
    row[i]: row[max(i - 1, 0) : i] + row[i + 1 : i + 2] for row in _ROWS for i in range(len(row))
}


def _neighbour(letter: str, rng: np.random.Generator) -> str:
    near = KEYBOARD_NEIGHBOURS[letter.lower()]
    chosen = near[rng.integers(len(near))]
    return chosen.upper() if letter.isupper() else chosen


def add_typos(text: str, rate: float, seed: int | np.random.Generator = 0) -> str:
    """``text`` with each ASCII letter mistyped with probability ``rate`` (``TYPO_KINDS``, drawn
    uniformly; a swap needs a letter after it, else the letter is doubled). ``rate`` = 0 returns
    ``text`` unchanged. ``seed``: an int or a ``numpy`` generator (drawn from in order)."""
    if not 0 <= rate <= 1:
        raise ValueError(f"rate is a probability per letter, in [0, 1]; got {rate}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    chars, out, i = list(text), [], 0
    while i < len(chars):
        c = chars[i]
        if not (c.isascii() and c.isalpha()) or rng.random() >= rate:
            out.append(c)
            i += 1
            continue
        kind = TYPO_KINDS[rng.integers(len(TYPO_KINDS))]
        nxt = chars[i + 1] if i + 1 < len(chars) else ""
        if kind == "swap" and nxt.isascii() and nxt.isalpha():
            out += [nxt, c]
            i += 2
            continue
        if kind == "drop":
            pass
        elif kind == "neighbour":
            out.append(_neighbour(c, rng))
        else:  # double, or a swap with no letter after it
            out += [c, c]
        i += 1
    return "".join(out)


def typo_texts(texts: Sequence[str], rate: float, seed: int = 0) -> list[str]:
    """One mistyped copy of each text (``add_typos`` at ``rate``). Text ``i`` draws from its own
    generator, seeded by (``seed``, ``i``): its typos do not depend on the other texts (a list cut
    short keeps the typos of the texts it keeps)."""
    return [add_typos(t, rate, np.random.default_rng([seed, i])) for i, t in enumerate(texts)]

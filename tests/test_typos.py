"""Typing errors made on purpose (``lora_edu.typos``) and the SST-2 task that scores them."""

from __future__ import annotations

import numpy as np
import pytest

from lora_edu.typos import KEYBOARD_NEIGHBOURS, TYPO_KINDS, add_typos, typo_texts

SENTENCE = "A gripping, funny and often moving film about two brothers -- 10/10!"


def test_rate_zero_changes_nothing_and_rate_one_changes_every_word():
    assert add_typos(SENTENCE, 0.0, seed=1) == SENTENCE
    noisy = add_typos(SENTENCE, 1.0, seed=1)
    words, noisy_words = SENTENCE.split(), noisy.split()
    assert len(words) == len(noisy_words)  # spaces are never touched
    assert all(
        a != b for a, b in zip(words, noisy_words, strict=True) if any(c.isalpha() for c in a)
    )


def test_only_letters_change():
    noisy = add_typos(SENTENCE, 1.0, seed=2)
    assert [c for c in noisy if not c.isalpha()] == [c for c in SENTENCE if not c.isalpha()]


def test_the_share_of_mistyped_letters_follows_the_rate():
    text = "the quick brown fox jumps over the lazy dog " * 200
    letters = sum(c.isalpha() for c in text)
    for rate in (0.05, 0.2):
        rng = np.random.default_rng(0)
        changed = sum(
            a != b for a, b in zip(text.split(), add_typos(text, rate, rng).split(), strict=True)
        )
        # a word of k letters survives with probability (1 - rate)^k (swaps and doubles of
        # equal letters aside, which can leave a word as it was)
        expected = sum(1 - (1 - rate) ** len(w) for w in text.split())
        assert abs(changed - expected) < 0.15 * expected, (rate, changed, expected, letters)


def _single_typo(word: str, noisy: str) -> str | None:
    """Which one typo turns ``word`` into ``noisy`` (None: not exactly one)."""
    n = len(word)
    if noisy in {word[:i] + word[i + 1] + word[i] + word[i + 2 :] for i in range(n - 1)}:
        return "swap"
    if noisy in {word[:i] + word[i + 1 :] for i in range(n)}:
        return "drop"
    if noisy in {word[:i] + word[i] + word[i:] for i in range(n)}:
        return "double"
    if len(noisy) == n and sum(a != b for a, b in zip(word, noisy, strict=True)) == 1:
        (a, b) = next((a, b) for a, b in zip(word, noisy, strict=True) if a != b)
        return "neighbour" if b in KEYBOARD_NEIGHBOURS[a] else "elsewhere"
    return None


def test_every_kind_of_typo_occurs_and_neighbours_are_on_the_keyboard():
    assert KEYBOARD_NEIGHBOURS["q"] == "w" and KEYBOARD_NEIGHBOURS["g"] == "fh"
    seen = {_single_typo("word", add_typos("word", 0.1, seed)) for seed in range(300)}
    assert seen - {None} == set(TYPO_KINDS)  # and never a replacement off the keyboard row


def test_typo_texts_are_fixed_per_sentence():
    texts = ["one good film", "a bad one", "fine"]
    assert typo_texts(texts, 0.3) == typo_texts(texts, 0.3)
    assert typo_texts(texts[:2], 0.3) == typo_texts(texts, 0.3)[:2]
    assert typo_texts(texts, 0.3, seed=1) != typo_texts(texts, 0.3, seed=0)
    with pytest.raises(ValueError, match=r"in \[0, 1\]; got 1.5"):
        add_typos("x", 1.5)


def test_the_typos_task_scores_every_rate_per_sentence(tmp_path):
    from lora_edu.presets import preset_grid
    from lora_edu.sweep import run_sweep
    from lora_edu.tasks.text import TYPO_RATES

    grid = preset_grid("sst2-typos", "typos")
    assert [run["method"] for run in grid] == ["head", "lora", "full"]  # smoke: one seed
    (record,) = run_sweep("sst2-typos", grid[:1], tmp_path / "typos.jsonl", progress=False)
    assert set(record["typo_correct"]) == {f"{r:g}" for r in TYPO_RATES}
    for rate, verdicts in record["typo_correct"].items():
        assert len(verdicts) == len(record["eval_correct"])
        assert record["typo_accuracy"][rate] == pytest.approx(verdicts.count("1") / len(verdicts))

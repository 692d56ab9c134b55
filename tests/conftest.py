"""Test-session defaults: never wait on the Hugging Face Hub (a failed call hangs ~75 s)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest


@pytest.fixture
def require_browser():
    """``require_browser(found, reason)``: skip a test that needs a real browser when ``found``
    is false, with ``reason`` in the summary (``-rs``); where ``LORA_EDU_REQUIRE_BROWSER=1`` (CI
    with Chromium installed), fail instead, so a browser that went missing cannot pass as
    green."""

    def check(found: bool, reason: str) -> None:
        if found:
            return
        if os.environ.get("LORA_EDU_REQUIRE_BROWSER") == "1":
            pytest.fail(f"LORA_EDU_REQUIRE_BROWSER=1, but {reason}")
        pytest.skip(reason)

    return check


@pytest.fixture(scope="module")
def smollm():
    """(tokenizer, SmolLM2-135M-Instruct), loaded once per test module, frozen; skipped when it
    cannot be obtained offline."""
    from lora_edu.models import load_causal_lm

    try:
        tokenizer, model = load_causal_lm()
    except (OSError, RuntimeError) as err:
        pytest.skip(f"SmolLM2-135M-Instruct not available offline: {err}")
    model.requires_grad_(False)
    return tokenizer, model

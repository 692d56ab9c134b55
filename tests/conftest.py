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

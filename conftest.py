"""Settings of every pytest run in this repository (unit tests and notebooks alike).

``python -m pytest`` is the fast, complete check: every unit test and every notebook at the
``smoke`` size, unless ``LORA_EDU_PROFILE`` says otherwise (``LORA_EDU_PROFILE=default python -m
pytest notebooks`` reproduces the figures at a laptop's size). With ``LORA_EDU_TIMINGS=FILE`` the
run also records how long each notebook took (``lora_edu.timings``).
"""

import os

os.environ.setdefault("LORA_EDU_PROFILE", "smoke")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_configure(config):
    path = os.environ.get("LORA_EDU_TIMINGS")
    if path:
        from lora_edu.timings import TimingsPlugin

        merge = os.environ.get("LORA_EDU_TIMINGS_MERGE") == "1"
        config.pluginmanager.register(TimingsPlugin(path, merge=merge), "lora_edu_timings")

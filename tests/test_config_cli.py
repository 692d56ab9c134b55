"""Profiles, device choice, the ``lora-edu`` command line and the lazy top-level imports."""

from __future__ import annotations

import subprocess
import sys

import pytest

import lora_edu
from lora_edu import cli, config


@pytest.mark.parametrize(
    "value, expected", [("", "default"), ("smoke", "smoke"), (" FULL ", "full")]
)
def test_profile_reads_environment(monkeypatch, value, expected):
    monkeypatch.setenv("LORA_EDU_PROFILE", value)
    assert config.profile() == expected


def test_profile_unset_is_default(monkeypatch):
    monkeypatch.delenv("LORA_EDU_PROFILE", raising=False)
    assert config.profile() == "default"


def test_unknown_profile_lists_the_three(monkeypatch):
    monkeypatch.setenv("LORA_EDU_PROFILE", "fast")
    with pytest.raises(
        ValueError, match=r"'fast' is not a profile; expected one of smoke, default, full"
    ):
        config.profile()


def test_by_profile(monkeypatch):
    monkeypatch.setenv("LORA_EDU_PROFILE", "smoke")
    assert config.by_profile(smoke=1, default=2, full=3) == 1
    monkeypatch.setenv("LORA_EDU_PROFILE", "full")
    assert config.by_profile(smoke=1, default=2) == 2
    assert config.by_profile(smoke=1, default=2, full=3) == 3


def test_device_override_and_errors(monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setenv("LORA_EDU_DEVICE", "cpu")
    assert config.device() == torch.device("cpu")
    monkeypatch.setenv("LORA_EDU_DEVICE", " CPU ")  # names are case-insensitive
    assert config.device() == torch.device("cpu")
    mps = getattr(torch.backends, "mps", None)
    if not (mps is not None and mps.is_available()):
        monkeypatch.setenv("LORA_EDU_DEVICE", "mps")
        with pytest.raises(ValueError, match="MPS backend is not available"):
            config.device()
    monkeypatch.setenv("LORA_EDU_DEVICE", "toaster")
    with pytest.raises(ValueError, match="'toaster' is not a torch device"):
        config.device()
    if not torch.cuda.is_available():
        monkeypatch.setenv("LORA_EDU_DEVICE", "cuda")
        with pytest.raises(ValueError, match="no CUDA device"):
            config.device()
    monkeypatch.delenv("LORA_EDU_DEVICE")
    expected = "cuda" if torch.cuda.is_available() else None
    assert config.device().type in ({expected} if expected else {"cpu", "mps"})


def test_info_lists_versions_profile_and_datasets(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("LORA_EDU_PROFILE", "smoke")
    monkeypatch.setenv("LORA_EDU_DATA", str(tmp_path))
    (tmp_path / "sst2").mkdir()
    for name in ("train.tsv", "dev.tsv", "test.tsv"):
        (tmp_path / "sst2" / name).write_text("sentence\tlabel\n")
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    for expected in ("torch", "numpy", "transformers", "datasets", "device", "profile      smoke"):
        assert expected in out
    assert f"sst2       {tmp_path / 'sst2'}" in out


def test_console_script_runs():
    result = subprocess.run(
        [sys.executable, "-m", "lora_edu.cli", "info"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "lora_edu" in result.stdout


def test_cli_without_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "info" in capsys.readouterr().out


def test_import_does_not_load_torch():
    code = "import sys, lora_edu, lora_edu.numpy_lora, lora_edu.analysis; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_unknown_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'lora_fwd'"):
        lora_edu.lora_fwd  # noqa: B018


def test_every_exported_name_resolves():
    missing = [name for name in lora_edu.__all__ if not hasattr(lora_edu, name)]
    assert missing == []
    assert lora_edu.LoRALinear is lora_edu.lora.LoRALinear  # the public face of the layer
    assert lora_edu.LoRALinear.__module__ == "lora_edu.lora_layer"

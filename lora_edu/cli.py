"""The ``lora-edu`` command line: ``lora-edu info`` (and more subcommands as the package grows)."""

from __future__ import annotations

import argparse
import importlib
import platform
import sys
from collections.abc import Sequence

from lora_edu import __version__
from lora_edu.config import cache_dir, data_dir, device, profile


def _version(module: str) -> str:
    try:
        return getattr(importlib.import_module(module), "__version__", "installed")
    except ImportError:
        return "not installed"


def info_lines() -> list[str]:
    """What ``lora-edu info`` prints, one line per fact."""
    from lora_edu.data import locate_datasets

    lines = [f"lora_edu     {__version__}", f"python       {platform.python_version()}"]
    for module in ("torch", "numpy", "transformers", "datasets", "peft"):
        lines.append(f"{module:<12} {_version(module)}")
    try:
        dev = str(device())
    except ImportError:
        dev = "unknown (torch is not installed)"
    except ValueError as err:
        dev = f"error: {err}"
    lines.append(f"device       {dev}")
    try:
        lines.append(f"profile      {profile()}")
    except ValueError as err:
        lines.append(f"profile      error: {err}")
    lines.append(f"data dir     {data_dir()}")
    lines.append(f"cache dir    {cache_dir()}")
    lines.append("datasets:")
    for name, where in locate_datasets().items():
        lines.append(f"  {name:<10} {where if where else 'not found locally'}")
    return lines


def _info(args: argparse.Namespace) -> int:
    print("\n".join(info_lines()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lora-edu", description="lora_edu: learn LoRA by building it."
    )
    parser.add_argument("--version", action="version", version=f"lora-edu {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = sub.add_parser("info", help="versions, device, profile and which datasets are found")
    info.set_defaults(func=_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

"""The ``hpa-kit`` command line.

Each sub-command lives in its own module under :mod:`hpa_kit.commands` and exposes
``register(subparsers)``; that function adds a parser whose ``func`` default takes the parsed
arguments and returns an exit code. Command modules import their heavy dependencies inside
the function that runs the command, so ``hpa-kit --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from hpa_kit import __version__

__all__ = ["COMMANDS", "build_parser", "main"]

# Module names under hpa_kit.commands, in the order `hpa-kit --help` lists them.
COMMANDS: tuple[str, ...] = (
    "validate",
    "score",
    "synth",
    "segment",
    "predict",
    "folds",
    "prepare",
    "download_public",
    "train",
    "demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hpa-kit",
        description="Human Protein Atlas single-cell classification toolkit.",
    )
    parser.add_argument("--version", action="version", version=f"hpa-kit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"hpa_kit.commands.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The ``hpa-kit`` command line.

Each sub-command lives in its own module under :mod:`hpa_kit.commands` and exposes
``register(subparsers)``; that function adds a parser whose ``func`` default takes the parsed
arguments and returns an exit code. Command modules import their heavy dependencies inside
the function that runs the command, so ``hpa-kit --help`` stays fast.

Exit status, for every command: 0 success; 1 the work failed or produced nothing useful
(:class:`hpa_kit.errors.RunError`, an ``OSError`` such as a full or read-only disk, or an
unexpected error); 2 bad arguments, input or paths found before the work
(:class:`hpa_kit.errors.UsageError`); 130 interrupted. Commands may add their own codes (``predict``
exits 3 when ``--max-images`` stopped it early). An expected failure is one line on stderr,
``hpa-kit COMMAND: message``; ``--debug`` (before or after the command) or ``HPA_KIT_DEBUG=1``
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence

from hpa_kit import __version__
from hpa_kit.errors import DEBUG_ENV, HpaKitError, describe

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
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"hpa_kit.commands.{name}").register(subparsers)
    for sub in subparsers.choices.values():  # `hpa-kit predict --debug ...` works too
        sub.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP
        )
    return parser


_DEBUG_HELP = f"show the traceback of a failure (also: {DEBUG_ENV}=1)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    return run_command(args.func, args, name=f"hpa-kit {args.command}", debug=debug)


def run_command(
    func: Callable[[argparse.Namespace], int | None],
    args: argparse.Namespace,
    *,
    name: str,
    debug: bool = False,
) -> int:
    """``func(args)`` as an exit status; an expected failure becomes one line on stderr.

    :class:`hpa_kit.errors.HpaKitError` gives its ``exit_code`` (2 usage, 1 runtime), an
    ``OSError`` 1, an interrupt 130, a closed output pipe 141 (silently, as shells report
    SIGPIPE), anything else 1 with a hint; ``debug`` re-raises instead.
    """
    try:
        code = int(func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:  # `hpa-kit score ... | head`: the reader left; no message
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except HpaKitError as exc:
        if debug:
            raise
        print(f"{name}: {describe(exc)}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # a missing file, a full or read-only disk: the cause names the path
        if debug:
            raise
        print(f"{name}: {describe(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug: still one line, and how to see more
        if debug:
            raise
        print(
            f"{name}: unexpected error: {describe(exc)} "
            f"(run with --debug or {DEBUG_ENV}=1 for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

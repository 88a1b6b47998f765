"""The errors hpa_kit raises on purpose, and what the command line does with them.

Two kinds of expected failure, each with its exit status in ``hpa-kit``:

- :class:`UsageError` (exit 2): the input, an option or a path is wrong, found *before* the
  long work starts (a missing folder, an output that is a directory, a resume file of another
  run, a malformed CSV). Nothing was written.
- :class:`RunError` (exit 1): the work started and could not finish or produced nothing useful
  (every image failed, a disk filled up, a training state file is truncated).

Both carry a message that names the file or id and the cause, written for the user; the CLI
prints ``hpa-kit <command>: <message>`` on one line, never a traceback. ``--debug`` (or the
environment variable ``HPA_KIT_DEBUG=1``) re-raises so the traceback shows.

Module-specific errors subclass one of these (``SubmissionError`` is a ``UsageError``, for
example), so library callers can catch the specific class and the CLI needs no list.

>>> isinstance(UsageError("x"), ValueError), UsageError.exit_code, RunError.exit_code
(True, 2, 1)
"""

from __future__ import annotations

__all__ = ["DEBUG_ENV", "HpaKitError", "RunError", "UsageError", "describe"]

DEBUG_ENV = "HPA_KIT_DEBUG"
"""Environment variable: ``1`` makes the CLI show tracebacks (as ``--debug`` does)."""


class HpaKitError(Exception):
    """Base of the expected failures; ``exit_code`` is the CLI's exit status for it."""

    exit_code = 1


class UsageError(HpaKitError, ValueError):
    """Bad input, option or path, found before the work (CLI exit status 2)."""

    exit_code = 2


class RunError(HpaKitError, RuntimeError):
    """The work started and failed, or produced nothing useful (CLI exit status 1)."""

    exit_code = 1


def describe(exc: BaseException) -> str:
    """One line for a failure: the message, prefixed by the type unless it is ours.

    >>> describe(UsageError("folder x does not exist"))
    'folder x does not exist'
    >>> describe(FileNotFoundError(2, "No such file or directory", "a.csv"))
    "FileNotFoundError: [Errno 2] No such file or directory: 'a.csv'"
    >>> describe(KeyError("id"))
    "KeyError: 'id'"
    """
    text = " ".join(str(exc).split())
    if isinstance(exc, HpaKitError) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

"""Output files of batch jobs: checks before the work, atomic writes, resume logs.

Three rules every job that writes files follows:

1. **Check before the work** (:func:`check_output_file`, :func:`check_distinct_files`): the
   output's folder exists and can be written to, the output is not a folder nor a device,
   the disk has room for what will be written, and no two options name the same file.
   Each failure is a :class:`hpa_kit.errors.UsageError` (exit 2) that names the path.
2. **Write atomically** (:func:`atomic_path`, :func:`atomic_write_text`; the one home of this
   rule: images, checkpoints, submissions and labels CSVs all go through it): write to a
   temporary file beside the target, then rename it over the target, so a reader never sees
   half a file and a failed write leaves the target as it was. The temporary name carries a
   marker and the writer's process id (:func:`temp_path`)::

       .{name}.hpa-kit-tmp-{pid}-{8 hex digits}{suffix}
       .a_red.png.hpa-kit-tmp-4242-0f3a9c1e.png          (a_red.png, written by process 4242)

   A write killed half-way leaves that file; the first atomic write into the same folder by a
   later process removes it (:func:`remove_stale_temps`: only names of exactly this pattern,
   only when process ``pid`` is no longer running), never another file.
3. **Never destroy a file the program did not write** (:class:`ResumeLog`): a resume file
   starts with a header line that names its format and the run that wrote it; a file
   without that header, or with another run's header, is refused, not overwritten.

>>> import tempfile
>>> folder = Path(tempfile.mkdtemp())
>>> path = atomic_write_text(folder / "a.csv", "ID\\n")
>>> path.read_text(), sorted(p.name for p in folder.iterdir())
('ID\\n', ['a.csv'])
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hpa_kit.errors import RunError, UsageError, describe

__all__ = [
    "ResumeLog",
    "ResumeMismatchError",
    "TEMP_MARKER",
    "atomic_path",
    "atomic_write_text",
    "check_distinct_files",
    "check_output_file",
    "check_writable_folder",
    "remove_stale_temps",
    "temp_path",
]

_HEADER_LIMIT = 1 << 16  # a resume header is a few hundred bytes; a longer first line is not one

TEMP_MARKER = "hpa-kit-tmp"
"""The marker in the name of every temporary file of an atomic write (:func:`temp_path`)."""

_TEMP_NAME = re.compile(
    rf"\.(?P<name>.+)\.{re.escape(TEMP_MARKER)}-(?P<pid>[1-9][0-9]{{0,9}})-[0-9a-f]{{8}}"
    r"(?P<suffix>(?:\.[^.]*)?)",
    re.DOTALL,
)
_MAX_PID = 2**31 - 1
_swept: set[str] = set()  # folders this process has swept (one sweep per folder and process)


def temp_path(path: str | os.PathLike, *, pid: int | None = None) -> Path:
    """A new temporary name beside ``path`` for an atomic write by process ``pid`` (this one
    by default): hidden, marked, unique (random digits: writers may race) and ending with
    ``path``'s suffix (OpenCV and others pick the format from it).

    >>> name = temp_path("out/a_red.png", pid=4242).name
    >>> name.startswith(".a_red.png.hpa-kit-tmp-4242-"), name.endswith(".png"), _stale_pid(name)
    (True, True, 4242)
    """
    path = Path(path)
    pid = os.getpid() if pid is None else int(pid)
    token = secrets.token_hex(4)
    return path.with_name(f".{path.name}.{TEMP_MARKER}-{pid}-{token}{path.suffix}")


def _stale_pid(name: str) -> int | None:
    """The writer's pid when ``name`` is exactly a :func:`temp_path` name, else None.

    >>> _stale_pid(".a_red.png.hpa-kit-tmp-4242-0f3a9c1e.png"), _stale_pid(".a.csv.4242.tmp")
    (4242, None)
    >>> _stale_pid(".a_red.png.hpa-kit-tmp-4242-0f3a9c1e.jpg")  # not the target's suffix
    """
    match = _TEMP_NAME.fullmatch(name)
    if match is None or Path(match["name"]).suffix != match["suffix"]:
        return None
    pid = int(match["pid"])
    return pid if pid <= _MAX_PID else None


def _alive(pid: int) -> bool:
    """Whether process ``pid`` may be running (True when that cannot be told safely)."""
    if pid == os.getpid() or sys.platform == "win32":  # there os.kill(pid, 0) ends the process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove the leftovers of killed atomic writes in ``folder``; returns what was removed.

    Only regular files (not links) whose name is exactly a :func:`temp_path` name and whose
    writer process is no longer running are removed: a write in progress, or any other file,
    is left alone (on Windows, where liveness cannot be asked safely, nothing is removed). A
    clean-up, never an error: a folder that cannot be listed, or a file that cannot be
    removed, is left as it is. The writers are assumed to share this machine's process ids
    (a folder shared between machines or containers: a leftover whose pid is alive here
    stays).
    """
    folder = Path(folder)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:  # missing, not a folder, or not listable (writable all the same): no sweep
        return removed
    for entry in entries:
        pid = _stale_pid(entry.name)
        if pid is None or _alive(pid):
            continue
        try:
            if entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:  # gone meanwhile, or not ours to remove: it stays
            continue
    return removed


def _sweep_once(folder: Path) -> None:
    """:func:`remove_stale_temps` on ``folder`` at its first atomic write by this process (a
    folder of many images is listed once per process, not once per file)."""
    key = os.path.abspath(folder)
    if key not in _swept:
        remove_stale_temps(folder)
        _swept.add(key)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path (:func:`temp_path`) to write to; it replaces ``path`` when the block
    ends without error.

    The folder is created if needed, and its stale temporary files are removed first
    (:func:`remove_stale_temps`, at the first write into it by this process). On an error the
    temporary file is removed and ``path`` is left as it was; a reader never sees half a file.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     with atomic_path(Path(tmp) / "a.txt") as temp:
    ...         _ = temp.write_text("done")
    ...     [(p.name, p.read_text()) for p in Path(tmp).iterdir()]
    [('a.txt', 'done')]
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep_once(path.parent)
    temp = temp_path(path)
    try:
        yield temp
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` through :func:`atomic_path` (newlines as given, flushed to
    disk before the rename); an error leaves ``path`` as it was and propagates."""
    with atomic_path(path) as temp:
        with open(temp, "x", encoding=encoding, newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    return Path(path)


# --------------------------------------------------------------------------- checks


def check_writable_folder(folder: str | os.PathLike, *, what: str) -> Path:
    """Raise :class:`UsageError` unless ``folder`` exists and a file can be created in it
    (tried for real: permission bits do not tell for root or read-only mounts)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"the folder of {what} does not exist: {folder}")
    probe = temp_path(folder / ".hpa-kit-write-test")
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        probe.unlink()
    except OSError as exc:
        raise UsageError(
            f"cannot write in the folder of {what}: {folder} ({describe(exc)})"
        ) from exc
    return folder


def check_output_file(path: str | os.PathLike, *, what: str = "--out", need_bytes: int = 0) -> Path:
    """Raise :class:`UsageError` unless ``path`` can be written as a regular file: not a
    folder, not a device, its folder exists and is writable, at least ``need_bytes`` free."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{what} {path} is a folder; give the path of a file to write")
    if path.exists() and not path.is_file():
        raise UsageError(f"{what} {path} is not a regular file; give the path of a file to write")
    folder = check_writable_folder(path.parent, what=f"{what} {path}")
    if need_bytes > 0:
        free = shutil.disk_usage(folder).free
        if free < need_bytes:
            raise UsageError(
                f"not enough free space for {what} {path}: about {_mb(need_bytes)} needed, "
                f"{_mb(free)} free in {folder}"
            )
    return path


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def check_distinct_files(named: Mapping[str, str | os.PathLike | None]) -> None:
    """Raise :class:`UsageError` when two of the named paths are the same file.

    >>> check_distinct_files({"--out": "a.csv", "--resume": "b.jsonl", "--sample": None})
    >>> check_distinct_files({"--out": "a.csv", "--resume": "./a.csv"})
    Traceback (most recent call last):
    ...
    hpa_kit.errors.UsageError: --out and --resume name the same file (a.csv); give each its own path
    """
    given = [(name, Path(p)) for name, p in named.items() if p is not None]
    for i, (name_a, a) in enumerate(given):
        for name_b, b in given[i + 1 :]:
            if _same_file(a, b):
                raise UsageError(
                    f"{name_a} and {name_b} name the same file ({a}); give each its own path"
                )


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


# --------------------------------------------------------------------------- resume log


class ResumeMismatchError(UsageError):
    """The resume file is not one, or was written by another run (exit 2; nothing touched)."""


class ResumeLog:
    """A JSON-lines file of finished ids that a restarted job reads back.

    Line 1 is the header ``{"format": kind, "version": version, **identity}``: ``identity``
    holds what makes two runs the same (digests of the inputs, the options that change the
    results; ``notes`` say in words what a difference in a key means). Then one JSON record
    per finished id (``{"id": ..., ...}``), each appended,
    flushed and fsynced; a later record of an id wins.

    :meth:`open` refuses (:class:`ResumeMismatchError`) a file that is not a regular file,
    does not start with such a header, or whose header differs from this run's, and touches
    nothing then. Otherwise it drops a last line cut by a kill and returns the records.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        kind: str,
        version: int,
        identity: Mapping[str, Any],
        notes: Mapping[str, str] | None = None,
        what: str = "--resume",
    ) -> None:
        self.path = Path(path)
        self.what = what
        self.notes = dict(notes or {})
        self.header = {"format": kind, "version": version, **identity}
        self._file = None

    def _header_bytes(self) -> bytes:
        return (json.dumps(self.header, sort_keys=True) + "\n").encode()

    def open(self) -> dict[str, dict]:
        """Check the file, then open it for appending; returns ``{id: record}`` found in it."""
        path = self.path
        if path.exists() and not path.is_file():
            raise ResumeMismatchError(f"{self.what} {path} is not a regular file")
        fresh = not path.exists() or self._is_cut_header()
        records: dict[str, dict] = {}
        if fresh:
            check_output_file(path, what=self.what)
            with open(path, "wb") as handle:
                handle.write(self._header_bytes())
                handle.flush()
                os.fsync(handle.fileno())
        else:
            self._check_header()
            records, end = _read_records(path)
            if end < path.stat().st_size:
                os.truncate(path, end)  # a last line cut by a kill
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        return records

    def _is_cut_header(self) -> bool:
        """Empty, or a prefix of our own header (killed while writing it): safe to rewrite."""
        size = self.path.stat().st_size
        header = self._header_bytes()
        if size >= len(header):
            return False
        return header.startswith(self.path.read_bytes())

    def _check_header(self) -> None:
        with open(self.path, "rb") as handle:
            first = handle.readline(_HEADER_LIMIT)
        try:
            found = json.loads(first) if first.endswith(b"\n") else None
        except (UnicodeDecodeError, json.JSONDecodeError):
            found = None
        kind = self.header["format"]
        if not isinstance(found, dict) or found.get("format") != kind:
            raise ResumeMismatchError(
                f"{self.what} {self.path} is not a resume file of {kind} (no {kind} header on "
                "its first line); it is left untouched: give another path, or delete the file"
            )
        for key, value in self.header.items():
            if found.get(key) != value:
                note = f" ({self.notes[key]})" if key in self.notes else ""
                raise ResumeMismatchError(
                    f"{self.what} {self.path} was written by another run{note}: "
                    f"{_difference(key, found.get(key), value)}; it is left untouched: give "
                    "another path, or delete the file to start again"
                )

    def append(self, record: Mapping[str, Any]) -> None:
        """Add one record (flushed and fsynced); a failed write is a :class:`RunError`."""
        try:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            raise RunError(
                f"cannot append to {self.what} {self.path}: {describe(exc)}"
                + (" (the disk is full)" if exc.errno == errno.ENOSPC else "")
                + "; the ids finished before are kept in it"
            ) from exc

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:  # the error was reported by append
                pass
            self._file = None

    def __enter__(self) -> ResumeLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def read(path: str | os.PathLike) -> tuple[dict | None, dict[str, dict]]:
        """``(header, {id: record})`` of a resume file, unchecked (``(None, {})`` if none)."""
        path = Path(path)
        if not path.is_file():
            return None, {}
        with open(path, "rb") as handle:
            first = handle.readline(_HEADER_LIMIT)
        try:
            header = json.loads(first) if first.endswith(b"\n") else None
        except (UnicodeDecodeError, json.JSONDecodeError):
            header = None
        records, _ = _read_records(path)
        return (header if isinstance(header, dict) else None), records


def _difference(key: str, theirs: Any, ours: Any) -> str:
    """``its options.tta is "seed", this run's is "none"`` (the first differing entry).

    >>> print(_difference("options", {"tta": "seed", "floor": 0}, {"tta": "none", "floor": 0}))
    its options.tta is "seed", this run's is "none"
    """
    if isinstance(theirs, dict) and isinstance(ours, dict):
        for name in sorted(set(theirs) | set(ours)):
            if theirs.get(name) != ours.get(name):
                return _difference(f"{key}.{name}", theirs.get(name), ours.get(name))
    return f"its {key} is {_short(theirs)}, this run's is {_short(ours)}"


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


def _read_records(path: Path) -> tuple[dict[str, dict], int]:
    """Records after the header line, and the byte offset after the last complete line."""
    records: dict[str, dict] = {}
    end = 0
    with open(path, "rb") as handle:
        for number, line in enumerate(handle):
            if not line.endswith(b"\n"):
                break  # cut by a kill
            end += len(line)
            if number == 0:
                continue
            try:
                data = json.loads(line)
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue
            if isinstance(data, dict) and isinstance(data.get("id"), str):
                records[data["id"]] = data
    return records, end

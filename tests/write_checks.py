"""Helpers for tests of writers that go through hpa_kit.outputs (atomic writes): leftovers of a
killed writer, a rename that fails, and the temporary names left in a folder."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from hpa_kit.outputs import TEMP_MARKER, temp_path

NEVER_A_PID = 2**22 + 1  # above Linux's PID_MAX_LIMIT (2**22): no process ever has it


def plant_leftovers(target: Path) -> list[Path]:
    """What writers killed mid-write leave beside ``target``: a temporary file of ``target``
    and one of another file of its folder, both of a process that is gone."""
    target.parent.mkdir(parents=True, exist_ok=True)
    leftovers = [
        temp_path(target, pid=NEVER_A_PID),
        temp_path(target.with_name("other.csv"), pid=NEVER_A_PID),
    ]
    for path in leftovers:
        path.write_bytes(b"half a file")
    return leftovers


def temp_names(folder: Path) -> list[str]:
    """Names of temporary files of atomic writes anywhere under ``folder``."""
    return sorted(p.name for p in folder.rglob(f"*{TEMP_MARKER}*"))


def fail_renames_to(monkeypatch, name: str) -> None:
    """Make the rename that ends an atomic write of a file called ``name`` fail (EIO), as a
    failing disk would; the temporary file is written by then."""
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst).name == name:
            raise OSError(errno.EIO, "Input/output error (simulated)", os.fspath(dst))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)

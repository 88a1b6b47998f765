"""hpa_kit.outputs atomic writes: the temporary name, what a failed or killed write leaves,
and which leftovers the next write removes (only its own pattern, only of dead writers).
The checks before the work and the resume log are tested in tests/test_runner.py."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hpa_kit.io import write_channels, write_label_image
from hpa_kit.outputs import (
    TEMP_MARKER,
    atomic_path,
    atomic_write_text,
    remove_stale_temps,
    temp_path,
)
from hpa_kit.submission import write_submission

NEVER_A_PID = 2**22 + 1  # above Linux's PID_MAX_LIMIT (2**22): no process ever has it

_WRITER = """
import sys, time
from hpa_kit.outputs import atomic_path
with atomic_path(sys.argv[1]) as temp:
    temp.write_text("half")
    print(temp, flush=True)
    time.sleep(120)
"""


def _start_writer(target: Path) -> tuple[subprocess.Popen, Path]:
    """A process inside an atomic write of ``target``: its temporary file is written."""
    process = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(target)], stdout=subprocess.PIPE, text=True
    )
    line = process.stdout.readline().strip()
    assert line, "the writer process did not start"
    return process, Path(line)


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_temp_name_is_hidden_marked_with_the_pid_and_keeps_the_suffix(tmp_path):
    target = tmp_path / "a_red.png"
    first, second = temp_path(target), temp_path(target)
    assert first.parent == tmp_path and first != second  # unique: writers may race
    assert first.name.startswith(f".a_red.png.{TEMP_MARKER}-{os.getpid()}-")
    assert first.suffix == ".png"  # OpenCV picks the format from it
    assert temp_path(target, pid=77).name.startswith(f".a_red.png.{TEMP_MARKER}-77-")
    assert re.fullmatch(rf"\.notes\.{TEMP_MARKER}-{os.getpid()}-[0-9a-f]{{8}}",
                        temp_path(tmp_path / "notes").name)  # fmt: skip


def test_killed_write_is_removed_by_the_next_write_of_that_target(tmp_path):
    target = tmp_path / "submission.csv"
    target.write_text("old\n")
    writer, temp = _start_writer(target)
    writer.kill()  # SIGKILL: no finally block runs
    writer.wait()
    assert _names(tmp_path) == sorted([temp.name, "submission.csv"])
    assert target.read_text() == "old\n"  # the killed write left the target as it was
    atomic_write_text(target, "new\n")
    assert _names(tmp_path) == ["submission.csv"] and target.read_text() == "new\n"


def test_a_live_writers_temp_and_unrelated_files_are_never_touched(tmp_path):
    target = tmp_path / "labels.csv"
    writer, live = _start_writer(target)
    try:
        outside = tmp_path / "outside"
        outside.mkdir()
        (outside / "keep.txt").write_text("mine")
        unrelated = [
            tmp_path / ".labels.csv.tmp",
            tmp_path / f".labels.csv.{NEVER_A_PID}.tmp",  # an older pattern
            tmp_path / f".labels.csv.{TEMP_MARKER}-{NEVER_A_PID}-0123abcz.csv",  # not hex
            tmp_path / f".labels.csv.{TEMP_MARKER}-{NEVER_A_PID}-0123abcd.png",  # other suffix
            tmp_path / f"labels.csv.{TEMP_MARKER}-{NEVER_A_PID}-0123abcd.csv",  # not hidden
            tmp_path / f".labels.csv.{TEMP_MARKER}-0-0123abcd.csv",  # pid 0: a process group
            tmp_path / f".labels.csv.{TEMP_MARKER}-99999999999-0123abcd.csv",  # no such pid
            tmp_path / "labels.csv.bak",
        ]
        for path in unrelated:
            path.write_text("not a leftover")
        link = temp_path(target, pid=NEVER_A_PID)
        link.symlink_to(outside / "keep.txt")  # the right name, but a link: not ours
        folder = temp_path(tmp_path / "x.csv", pid=NEVER_A_PID)
        folder.mkdir()
        before = _names(tmp_path)
        atomic_write_text(target, "ID,Label\n")
        assert remove_stale_temps(tmp_path) == []
        assert _names(tmp_path) == sorted([*before, "labels.csv"])
        assert live.read_text() == "half" and link.read_text() == "mine"
        assert all(p.read_text() == "not a leftover" for p in unrelated)
    finally:
        writer.kill()
        writer.wait()
    assert remove_stale_temps(tmp_path) == [live]  # its writer is gone now


def test_a_failed_write_leaves_the_target_unchanged_and_no_temp(tmp_path):
    target = atomic_write_text(tmp_path / "a.txt", "one\n")
    with pytest.raises(UnicodeEncodeError):
        atomic_write_text(target, "caf\u00e9", encoding="ascii")
    with pytest.raises(RuntimeError, match="midway"):
        with atomic_path(target) as temp:
            temp.write_text("on")
            raise RuntimeError("failed midway")
    assert target.read_text() == "one\n" and _names(tmp_path) == ["a.txt"]


def _write_submission(path: Path) -> None:
    sample = pd.DataFrame({"ID": ["a"], "ImageWidth": [4], "ImageHeight": [4]})
    write_submission(path, {}, sample)


@pytest.mark.parametrize(
    ("name", "write"),
    [
        ("submission.csv", _write_submission),
        (
            "x_red.png",
            lambda p: write_channels(
                p.parent, "x", np.zeros((3, 4, 1), np.uint8), channels=("red",)
            ),
        ),  # fmt: skip
        ("x_cells.png", lambda p: write_label_image(p, np.eye(3, dtype=np.int32))),
        ("labels.csv", lambda p: atomic_write_text(p, "ID,Label\n")),
    ],
)
def test_every_writer_removes_dead_writers_leftovers(tmp_path, name, write):
    """write_submission, io's image writers and atomic_write_text share one sweep."""
    target = tmp_path / name
    leftovers = [temp_path(target, pid=NEVER_A_PID), temp_path(tmp_path / "y.csv", pid=NEVER_A_PID)]
    for path in leftovers:
        path.write_bytes(b"half")
    write(target)
    assert _names(tmp_path) == [name]


def test_a_folder_is_listed_once_per_process_not_once_per_file(tmp_path, monkeypatch):
    """A folder of many images is swept at its first write: writing N files costs one listing."""
    listed = []
    scandir = os.scandir
    monkeypatch.setattr(os, "scandir", lambda path=".": listed.append(path) or scandir(path))
    for i in range(20):
        atomic_write_text(tmp_path / f"{i}.txt", "x")
    assert listed == [tmp_path] and len(_names(tmp_path)) == 20


def test_a_folder_that_cannot_be_listed_is_still_written(tmp_path):
    """The sweep is a clean-up: a folder that can be written but not listed (mode 0333) still
    gets the file. Root ignores permission bits, so as root the writer runs without the
    capabilities that let it (setpriv)."""
    folder = tmp_path / "wx"
    folder.mkdir()
    folder.chmod(0o333)
    script = "import sys; from hpa_kit.outputs import atomic_write_text as w; w(sys.argv[1], 'x')"
    command = [sys.executable, "-c", script, str(folder / "a.txt")]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot make a folder unlistable")
        command = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    folder.chmod(0o755)
    assert result.returncode == 0, result.stderr
    assert (folder / "a.txt").read_text() == "x"


def test_no_sweep_where_liveness_cannot_be_asked_safely(tmp_path, monkeypatch):
    """On Windows os.kill(pid, 0) would end process pid: leftovers are kept there."""
    leftover = temp_path(tmp_path / "a.csv", pid=NEVER_A_PID)
    leftover.write_text("half")
    monkeypatch.setattr(sys, "platform", "win32")
    assert remove_stale_temps(tmp_path) == [] and leftover.exists()
    monkeypatch.undo()
    assert remove_stale_temps(tmp_path) == [leftover] and not leftover.exists()

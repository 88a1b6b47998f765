"""Progress bars show only on an interactive output (a terminal or a Jupyter kernel)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from hpa_kit.progress import interactive, progress_bar


def _bar_output(env: dict[str, str]) -> str:
    code = (
        "from hpa_kit.progress import progress_bar\n"
        "for _ in progress_bar(range(50), desc='work'):\n    pass\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=True,
    )
    return run.stderr


def test_redirected_output_gets_no_bar():
    env = {"HPA_KIT_PROGRESS": ""}
    assert _bar_output(env) == ""


def test_environment_forces_the_bar_on():
    assert "work" in _bar_output({"HPA_KIT_PROGRESS": "1"})


@pytest.mark.parametrize(("value", "expected"), [("0", False), ("1", True)])
def test_environment_overrides_the_terminal_check(monkeypatch, value, expected):
    monkeypatch.setenv("HPA_KIT_PROGRESS", value)
    assert interactive() is expected
    assert progress_bar(range(2)).disable is (not expected)


def test_disabled_by_the_caller_even_when_forced(monkeypatch):
    monkeypatch.setenv("HPA_KIT_PROGRESS", "1")
    assert progress_bar(range(2), enabled=False).disable

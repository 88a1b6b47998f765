"""Writers that go through hpa_kit.outputs, as a user sees them: the leftovers of a killed write
are removed by the next write into that folder, and a write that fails leaves the file that was
there before (and no temporary file). The mechanism itself is tested in tests/test_outputs.py;
the segmentation stand-in's weight files in tests/test_segment_standin.py."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from write_checks import fail_renames_to, plant_leftovers, temp_names

from hpa_kit.batch import BatchReport
from hpa_kit.cli import main
from hpa_kit.synth import write_dataset
from hpa_kit.viz import save_png

_GPU_CHECK = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", _GPU_CHECK)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _png(path: Path, version: int) -> None:
    save_png(path, np.full((4, 6, 3), version, np.uint8))


def _failures_csv(path: Path, version: int) -> None:
    BatchReport(failed={f"id{version}": "HTTP 404"}).write_failures(path)


def _synth_train_csv(path: Path, version: int) -> None:
    write_dataset(path.parent, n=version, size=64, seed=0, id_prefix="t", progress=False)


def _folds_csv(path: Path, version: int) -> None:
    source = path.parent.parent / "train.csv"
    rows = 8 + 2 * version
    pd.DataFrame({"ID": [f"i{k}" for k in range(rows)], "Label": ["0", "1"] * (rows // 2)}).to_csv(
        source, index=False
    )
    if main(["folds", str(source), "--out", str(path), "--n-splits", "2"]) != 0:
        raise OSError("hpa-kit folds failed")


def _gpu_check_json(path: Path, version: int) -> None:
    _gpu_check().Results(str(path), argparse.Namespace(version=version)).write()


WRITERS = {
    "viz.save_png": ("overlay.png", _png),
    "BatchReport.write_failures": ("failures.csv", _failures_csv),
    "synth.write_dataset": ("train.csv", _synth_train_csv),
    "hpa-kit folds": ("folds.csv", _folds_csv),
    "gpu_check --json": ("gpu_check.json", _gpu_check_json),
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_killed_writes_leftovers_go_and_a_failed_write_keeps_the_old_file(
    writer, tmp_path, monkeypatch
):
    name, write = WRITERS[writer]
    target = tmp_path / "out" / name
    plant_leftovers(target)
    write(target, 1)
    assert temp_names(tmp_path) == [] and target.is_file()  # the dead writers' files are gone
    first = target.read_bytes()
    write(target, 2)
    second = target.read_bytes()
    assert second != first  # the versions differ, so the check below can fail
    fail_renames_to(monkeypatch, name)
    with pytest.raises(OSError):
        write(target, 3)
    assert target.read_bytes() == second and temp_names(tmp_path) == []

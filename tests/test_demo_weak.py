"""hpa_kit.demo's cell-learning modes and the weak-labels preset (reduced runs)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from hpa_kit.demo import PRESETS, DemoConfig, demo_train_config, preset_config, quick_config
from hpa_kit.errors import UsageError


def test_weak_labels_preset_and_its_record():
    cfg = preset_config("weak-labels", seed=2)
    assert (cfg.input_size, cfg.epochs, cfg.preset, cfg.seed) == (64, 16, "weak-labels", 2)
    assert (cfg.refine_from, cfg.refine_rounds) == (
        PRESETS["weak-labels"]["refine_from"],
        PRESETS["weak-labels"]["refine_rounds"],
    )
    assert cfg.cell_learning == "image-labels" and DemoConfig().preset is None
    with pytest.raises(UsageError, match="unknown demo preset"):
        preset_config("strong-labels")


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"cell_learning": "mil"}, "cell_learning"),
        ({"refine_from": "oracle"}, "refine_from"),
        ({"pooling": "attention"}, "pooling"),
        ({"refine_rounds": 0}, "refine_rounds"),
    ],
)
def test_demo_config_rejects_bad_cell_learning(changes, match):
    with pytest.raises(UsageError, match=match):
        DemoConfig(**changes)


def test_train_config_follows_the_mode(tmp_path):
    from hpa_kit.demo import demo_paths

    paths = demo_paths(tmp_path)
    default = demo_train_config(DemoConfig(), paths)
    assert default.cell_learning == "image-labels" and default.train_csv.endswith("crops.csv")
    oracle = demo_train_config(DemoConfig(cell_learning="oracle"), paths)
    assert oracle.cell_learning == "image-labels"
    assert oracle.train_csv.endswith("crops_oracle.csv")
    refined = demo_train_config(preset_config("weak-labels", cell_learning="refined"), paths)
    assert (refined.cell_learning, refined.input_size, refined.epochs) == ("refined", 64, 16)


def test_cli_passes_the_preset_and_the_mode(monkeypatch, tmp_path):
    import hpa_kit.demo
    from hpa_kit.cli import main

    seen = []

    def fake_run_demo(out, config, **_):
        seen.append(config)
        raise UsageError("stop here")

    monkeypatch.setattr(hpa_kit.demo, "run_demo", fake_run_demo)
    args = ["demo", "--out", str(tmp_path), "--preset", "weak-labels", "--seed", "3"]
    assert main([*args, "--cell-learning", "refined"]) == 2
    assert seen[-1] == preset_config("weak-labels", seed=3, cell_learning="refined")
    assert main(["demo", "--out", str(tmp_path), "--cell-learning", "oracle"]) == 2
    assert seen[-1] == DemoConfig(cell_learning="oracle")


@pytest.fixture(scope="module")
def oracle_run(tmp_path_factory):
    from hpa_kit.demo import run_demo

    out = tmp_path_factory.mktemp("oracle") / "out"
    return run_demo(out, quick_config(cell_learning="oracle"), log=lambda *_: None)


def test_oracle_demo_trains_on_the_truth_and_records_it(oracle_run):
    summary, out = oracle_run.summary, oracle_run.out
    assert summary["cell_learning"] == "oracle" and summary["preset"] is None
    counts = summary["oracle"]
    assert counts["crops"] == summary["counts"]["train_crops"] > counts["matched"] > 0
    crops = pd.read_csv(out / "crops" / "crops.csv", dtype=str)
    oracle = pd.read_csv(out / "crops" / "crops_oracle.csv", dtype=str)
    assert list(oracle["ID"]) == list(crops["ID"])
    for given, true in zip(crops["Label"], oracle["Label"], strict=True):
        assert set(true.split("|")) <= set(given.split("|"))
    assert counts["changed"] == int((crops["Label"] != oracle["Label"]).sum()) > 0
    saved = json.loads((out / "model" / "train_config.json").read_text())
    assert saved["train_csv"].endswith("crops_oracle.csv")
    assert summary["submission_valid"] and summary["map"] is not None


def test_refined_demo_runs_its_stages(tmp_path):
    from hpa_kit.demo import format_summary, run_demo

    config = quick_config(cell_learning="refined", refine_rounds=1)
    result = run_demo(tmp_path / "out", config, log=lambda *_: None)
    summary, model = result.summary, result.out / "model"
    assert summary["cell_learning"] == "refined" and summary["submission_valid"]
    assert (model / "round1" / "soft_labels.csv").is_file() and (model / "best").is_dir()
    assert [row["stage"] for row in summary["training"]["history"]] == ["stage0", "round1"]
    assert "refined (none)" in format_summary(summary)

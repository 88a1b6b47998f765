"""hpa_kit.demo: scale-aware segmentation, the helpers it calls (decoding a submission's cells,
weak-label crops, pooled segmentation matching), and a reduced demo."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hpa_kit.crop import write_cell_crops
from hpa_kit.demo import MARKER, DemoConfig, _prepare_out, quick_config
from hpa_kit.errors import UsageError
from hpa_kit.rle import empty_mask_string, encode_label_image
from hpa_kit.segment import ClassicalSegmenter, SegConfig, match_dataset, match_labels
from hpa_kit.submission import (
    format_prediction_string,
    is_placeholder,
    prediction_label_image,
    submission_cells,
)
from hpa_kit.synth import SynthConfig, generate_image, write_dataset

# ---------------------------------------------------------------- scale


def test_demo_segmenter_finds_synthetic_cells_the_default_misses():
    synth = generate_image(size=320, seed=3)
    scaled = ClassicalSegmenter(1.0, pixel_size=2048 / 320)
    _, cells = scaled.segment([synth.image])[0]
    match = match_labels(synth.cell_labels, cells, threshold=0.6)
    assert cells.dtype == np.int32 and cells.shape == synth.cell_labels.shape
    assert match.f1 > 0.7, match
    # the unscaled defaults are for 2048 px HPA images: no synthetic cell is big enough
    _, default_cells = ClassicalSegmenter(1.0).segment([synth.image])[0]
    assert match_labels(synth.cell_labels, default_cells, threshold=0.6).tp == 0


def test_segmenter_pixel_size_scales_the_size_thresholds():
    seg = ClassicalSegmenter(0.5, pixel_size=4.0)
    assert seg.config == SegConfig(scale=0.5, pixel_size=4.0)
    # 5500 * (0.5 / 4)**2 = 85.9 -> 86 map pixels
    assert seg.config.sizes().min_cell_area == 86


# ---------------------------------------------------------------- submission helpers


def test_submission_cells_groups_triplets_by_mask_in_order():
    masks, probs = submission_cells("3 0.25 BB 0 0.5 AA 5 1 BB")
    assert masks == ["BB", "AA"]
    assert probs.shape == (2, 19) and probs.dtype == np.float32
    assert probs[0, 3] == 0.25 and probs[0, 5] == 1.0 and probs[1, 0] == 0.5
    assert probs.sum() == pytest.approx(1.75)
    assert submission_cells("")[0] == []


def test_prediction_label_image_decodes_cells_and_the_placeholder():
    found = np.zeros((8, 10), np.int32)
    found[0:4, 0:4] = 1
    found[2:6, 3:9] = 2  # drawn over cell 1's corner
    masks = encode_label_image(found)
    text = format_prediction_string([(0, 0.5, masks[2]), (3, 0.25, masks[1]), (0, 1.0, masks[1])])
    labels, probs = prediction_label_image(text, 8, 10)
    # cells in order of first appearance: the mask of cell 2 comes first
    assert np.array_equal(labels, np.select([found == 2, found == 1], [1, 2], 0))
    assert labels.dtype == np.int32 and probs.shape == (2, 19)
    assert probs[0, 0] == 0.5 and probs[1, 3] == 0.25 and probs[1, 0] == 1.0
    empty = empty_mask_string(8, 10)
    assert is_placeholder([empty], 8, 10) and not is_placeholder([empty], 8, 11)
    assert not is_placeholder([masks[1]], 8, 10) and not is_placeholder([empty, empty], 8, 10)
    labels, probs = prediction_label_image(f"0 1 {empty}", 8, 10)
    assert not labels.any() and probs.shape == (0, 19)


def test_pooled_matching_of_submission_cells_against_true_label_images():
    """The demo's segmentation score: decoded rows matched to the truth, pooled."""
    truth = np.zeros((8, 10), np.int32)
    truth[0:4, 0:4] = 1
    truth[5:8, 6:10] = 2
    found = np.zeros_like(truth)
    found[0:4, 0:4] = 1  # exact
    found[0:2, 6:9] = 2  # a cell that is not there
    masks = encode_label_image(found)
    text = format_prediction_string([(0, 0.5, masks[1]), (0, 0.5, masks[2])])
    placeholder = f"0 1 {empty_mask_string(8, 10)}"
    rows = [text, placeholder]  # the placeholder row counts as no cell found
    result = match_dataset(
        ((truth, prediction_label_image(row, 8, 10)[0]) for row in rows), threshold=0.6
    )
    assert (result.n_images, result.tp, result.n_true, result.n_pred) == (2, 1, 4, 2)
    assert result.f1 == pytest.approx(2 / 6) and result.mean_iou == 1.0


# ---------------------------------------------------------------- weak labels


def test_cell_crops_carry_their_image_labels_and_fold(tmp_path):
    data = write_dataset(tmp_path / "data", n=2, size=256, seed=4, config=SynthConfig(cells=(4, 6)))
    table = pd.read_csv(data.train_csv, dtype={"ID": str}).assign(fold=[0, 1])
    table.loc[len(table)] = {"ID": "missing", "Label": "0", "fold": 0}
    seg = ClassicalSegmenter(0.5, pixel_size=2048 / 256)
    crops, failures = write_cell_crops(
        data.out / "images", table, tmp_path / "crops", segmenter=seg, size=24
    )
    assert list(failures) == ["missing"] and "MissingChannelError" in failures["missing"]
    assert len(crops) >= 4 and list(crops.columns) == ["ID", "Label", "image", "fold"]
    labels = dict(zip(table["ID"], table["Label"], strict=True))
    folds = dict(zip(table["ID"], table["fold"], strict=True))
    for row in crops.itertuples(index=False):
        assert row.Label == labels[row.image] and row.fold == folds[row.image]
        for color in ("red", "green", "blue"):
            assert (tmp_path / "crops" / f"{row.ID}_{color}.png").is_file()
        assert not (tmp_path / "crops" / f"{row.ID}_yellow.png").exists()


def test_cell_crops_record_an_image_without_cells_and_go_on(tmp_path):
    data = write_dataset(tmp_path / "data", n=1, size=256, seed=4, config=SynthConfig(cells=(4, 6)))
    blank = np.zeros((256, 256, 4), np.uint8)
    from hpa_kit.io import write_channels

    write_channels(data.out / "images", "blank", blank)
    table = pd.concat(
        [
            pd.read_csv(data.train_csv, dtype={"ID": str}),
            pd.DataFrame({"ID": ["blank"], "Label": ["18"]}),
        ]
    )
    seg = ClassicalSegmenter(0.5, pixel_size=2048 / 256)
    crops, failures = write_cell_crops(
        data.out / "images", table, tmp_path / "crops", segmenter=seg, size=24
    )
    assert failures == {"blank": "ValueError: no cell found"}
    assert len(crops) > 0 and set(crops["image"]) == {data.ids[0]}
    assert list(crops.columns) == ["ID", "Label", "image"]  # no fold column given, none written
    with pytest.raises(ValueError, match="purple"):
        write_cell_crops(
            data.out / "images",
            table,
            tmp_path / "c2",
            segmenter=seg,
            size=24,
            channels=("purple",),
        )


# ---------------------------------------------------------------- config and output folder


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"n_train": 0}, "n_train"),
        ({"epochs": True}, "epochs"),
        ({"n_folds": 1}, "n_folds"),
        ({"size": 32}, "size"),
        ({"seg_scale": 0}, "seg_scale"),
        ({"channels": ("green", "purple")}, "channels"),
        ({"tta": "all"}, "TTA"),
    ],
)
def test_config_rejects_bad_values(changes, match):
    with pytest.raises(UsageError, match=match):
        DemoConfig(**changes)


def test_config_pixel_size_and_dict():
    cfg = DemoConfig(size=512)
    assert cfg.pixel_size == 4.0
    data = cfg.to_dict()
    assert data["pixel_size"] == 4.0
    assert tuple(data["synth"]["cells"]) == SynthConfig().cells
    assert json.loads(json.dumps(data, default=str))["size"] == 512


def test_output_folder_rules(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    with pytest.raises(UsageError, match="not empty"):
        _prepare_out(foreign)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="not a folder"):
        _prepare_out(tmp_path / "file")
    assert (foreign / "keep.txt").is_file()
    demo = tmp_path / "demo"
    _prepare_out(demo)
    assert (demo / MARKER).is_file()
    (demo / "submission.csv").write_text("old")
    (demo / "model").mkdir()
    (demo / "notes.txt").write_text("mine")
    _prepare_out(demo)  # a rerun removes the demo's outputs only
    assert not (demo / "submission.csv").exists() and not (demo / "model").exists()
    assert (demo / "notes.txt").read_text() == "mine"


# ---------------------------------------------------------------- the reduced demo


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    from hpa_kit.cli import main

    out = tmp_path_factory.mktemp("demo") / "out"
    code = main(["demo", "--out", str(out), "--quick", "--no-progress"])
    return code, out


def test_quick_demo_exits_zero_with_valid_submission(quick_run):
    from hpa_kit.submission import read_sample, validate_submission

    code, out = quick_run
    assert code == 0
    sample = read_sample(out / "test" / "sample_submission.csv")
    for name in ("submission.csv", "baseline.csv", "baseline_cell_mean.csv"):
        report = validate_submission(out / name, sample)
        assert report.ok, report.summary()


def test_quick_demo_scores_and_summary(quick_run):
    from hpa_kit.metric import score_submission

    _, out = quick_run
    summary = json.loads((out / "summary.json").read_text())
    for key in ("map", "baseline_map", "baseline_cell_mean_map"):
        assert 0.0 <= summary[key] <= 1.0
    # the summary's numbers are the metric's on the files written
    again = score_submission(out / "submission.csv", out / "test" / "truth.csv")
    assert again.map == pytest.approx(summary["map"])
    again = score_submission(out / "baseline.csv", out / "test" / "truth.csv")
    assert again.map == pytest.approx(summary["baseline_map"])
    assert summary["submission_valid"] is True
    assert summary["counts"]["test_images"] == quick_config().n_test
    assert summary["counts"]["test_cells_found"] > 0
    assert 0.0 < summary["segmentation"]["f1"] <= 1.0
    stages = {"synth", "crops", "train", "predict", "baseline", "score", "overlays", "total"}
    assert set(summary["seconds"]) == stages
    assert summary["tta"] == "none"
    better = max(summary["baseline_map"], summary["baseline_cell_mean_map"])
    assert summary["gain"] == summary["map"] - better


def test_quick_demo_records_and_prints_the_torch_kernel_set(quick_run):
    import os

    import torch

    from hpa_kit.demo import format_summary

    _, out = quick_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["torch"] == {
        "version": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "aten_cpu_capability": os.environ.get("ATEN_CPU_CAPABILITY"),
    }
    text = format_summary(summary)
    assert f"{torch.__version__}, {torch.backends.cpu.get_cpu_capability()}" in text
    assert "per-cell gain over the better baseline" in text and f"{summary['gain']:+.4f}" in text


def test_torch_kernels_follow_the_environment_variable():
    """torch reads ATEN_CPU_CAPABILITY at start-up: a child process with it set to default
    reports the default kernel set and the variable."""
    import os
    import subprocess
    import sys

    code = "import json; from hpa_kit.demo import torch_kernels; print(json.dumps(torch_kernels()))"
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    info = json.loads(done.stdout)
    assert info["cpu_capability"] == "DEFAULT" and info["aten_cpu_capability"] == "default"


def test_quick_demo_outputs_exist_and_training_saw_image_labels_only(quick_run):
    from hpa_kit.model import read_config

    _, out = quick_run
    summary = json.loads((out / "summary.json").read_text())
    assert Path(summary["paths"]["checkpoint"], "model.pt").is_file()
    config = read_config(summary["paths"]["checkpoint"])
    assert config.input_size == quick_config().input_size
    overlays = summary["paths"]["overlay_files"]
    assert len(overlays) == quick_config().overlays
    size = quick_config().size
    for path in overlays:
        import cv2

        picture = cv2.imread(path)  # two panels and a gap under a legend strip
        assert picture.shape[0] > size and picture.shape[1] == 2 * size + 4
    # every training crop is labelled with its image's train.csv label
    crops = pd.read_csv(out / "crops" / "crops.csv", dtype={"ID": str, "image": str})
    train = pd.read_csv(out / "train" / "train.csv", dtype={"ID": str}).set_index("ID")
    assert len(crops) == summary["counts"]["train_crops"] > 0
    assert (crops["Label"].to_numpy() == train.loc[crops["image"], "Label"].to_numpy()).all()


def test_cli_help_states_the_config_defaults():
    from hpa_kit.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["demo"]
    text = " ".join(sub.format_help().split())
    cfg = DemoConfig()
    for phrase in (
        f"training images (default {cfg.n_train})",
        f"test images (default {cfg.n_test})",
        f"training epochs (default {cfg.epochs})",
        f"TTA set (default {cfg.tta})",
        f"base seed (default {cfg.seed})",
    ):
        assert phrase in text


def test_quick_demo_is_deterministic(quick_run, tmp_path):
    from hpa_kit.demo import run_demo

    _, first = quick_run
    second = run_demo(tmp_path / "again", quick_config(), log=lambda *_: None)
    for name in ("submission.csv", "baseline.csv", "baseline_cell_mean.csv"):
        assert (first / name).read_bytes() == (second.out / name).read_bytes(), name
    summary = json.loads((first / "summary.json").read_text())
    assert second.map == summary["map"] and second.baseline_map == summary["baseline_map"]


def test_cli_refuses_a_foreign_folder_and_bad_options(tmp_path, capsys):
    from hpa_kit.cli import main

    (tmp_path / "notes.txt").write_text("keep")
    assert main(["demo", "--out", str(tmp_path), "--quick", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hpa-kit demo: ") and "not empty" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert (tmp_path / "notes.txt").read_text() == "keep"
    assert main(["demo", "--out", str(tmp_path / "new"), "--quick", "--n-train", "2"]) == 2
    assert "n_folds" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()

"""hpa_kit.baselines: image-level confidences given to a submission's own cells."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hpa_kit.baselines import (
    baseline_predictions,
    cell_mean_baseline,
    image_baseline,
    whole_image_probs,
)
from hpa_kit.rle import empty_mask_string
from hpa_kit.submission import SubmissionError


def _table(rows: dict[str, str], height: int = 8, width: int = 10) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "ID": list(rows),
            "ImageWidth": [width] * len(rows),
            "ImageHeight": [height] * len(rows),
            "PredictionString": list(rows.values()),
        }
    )


def test_baseline_gives_every_cell_the_image_confidences():
    image_probs = np.zeros(19)
    image_probs[[2, 7]] = [0.75, 0.5]
    text = baseline_predictions("0 0.9 AA 4 0.1 AA 2 0.3 BB", image_probs)
    assert text == "2 0.75 AA 7 0.5 AA 2 0.75 BB 7 0.5 BB"
    # confidences below the floor are left out; none at all gives ""
    assert baseline_predictions("0 0.9 AA", [1e-13] * 19) == ""
    with pytest.raises(SubmissionError, match="19 class probabilities"):
        baseline_predictions("0 0.9 AA", [0.5] * 18)


def test_image_and_cell_mean_baselines_keep_placeholder_rows():
    placeholder = f"0 1 {empty_mask_string(8, 10)}"
    table = _table({"a": "1 0.5 AA 2 0.25 BB 1 1 BB", "b": placeholder})
    probs = {"a": [0.0] * 18 + [0.5], "b": [1.0] * 19}
    assert image_baseline(table, probs) == {"a": "18 0.5 AA 18 0.5 BB", "b": placeholder}
    # mean over the two cells: class 1 (0.5 + 1) / 2, class 2 (0 + 0.25) / 2
    assert cell_mean_baseline(table) == {
        "a": "1 0.75 AA 2 0.125 AA 1 0.75 BB 2 0.125 BB",
        "b": placeholder,
    }


def test_image_baseline_needs_every_image_probability():
    with pytest.raises(KeyError, match="a"):
        image_baseline(_table({"a": "1 0.5 AA"}), {})


def test_whole_image_probs_classify_the_resized_image(tmp_path):
    import timm
    import torch

    from hpa_kit.io import MissingImageError, resize_area, write_channels
    from hpa_kit.model import ClassifierConfig
    from hpa_kit.predict import classify_crops

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(40, 40, 4), dtype=np.uint8)
    write_channels(tmp_path, "img", image)
    config = ClassifierConfig(arch="lcnet_035", input_size=16, channels=("red", "green", "blue"))
    torch.manual_seed(0)
    model = timm.create_model("lcnet_035", pretrained=False, num_classes=19).eval()
    out = whole_image_probs(tmp_path, ["img"], model, config, tta="none")
    assert list(out) == ["img"] and out["img"].shape == (19,)
    # the whole image, area-resized to the input size, classified as one crop
    expected = classify_crops(resize_area(image, 16)[None], model, config, tta="none", amp=False)
    assert np.array_equal(out["img"], expected[0])
    with pytest.raises(MissingImageError, match="missing"):
        whole_image_probs(tmp_path, ["missing"], model, config, tta="none")

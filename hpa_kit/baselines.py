"""Image-level baselines on a submission's own cells: what per-cell classification adds.

A baseline keeps every cell (mask) of a submission and replaces its confidences by one set
of 19 values per image, so the segmentation is the same and only the within-image
differences between cells are gone. Two of them:

- :func:`image_baseline`: every cell gets the image-level prediction of a classifier
  (:func:`whole_image_probs`: the whole image resized to the classifier's input size, with
  the same TTA as the cells);
- :func:`cell_mean_baseline`: every cell gets the mean of its image's cell confidences (the
  very same numbers, averaged: the cleanest measure of what per-cell classification adds).

Rows without a cell (the placeholder ``0 1 <empty mask>``) are kept as they are. Baseline
strings list every (cell, class) with a confidence of at least ``1e-12`` (cells in order of
first appearance, then classes ascending), written by
:func:`hpa_kit.submission.cells_prediction_string`.

>>> baseline_predictions("0 0.9 AA 5 0.1 AA 0 0.2 BB", [0.5] + [0.0] * 17 + [0.25])
'0 0.5 AA 18 0.25 AA 0 0.5 BB 18 0.25 BB'
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = [
    "FLOOR",
    "baseline_predictions",
    "cell_mean_baseline",
    "image_baseline",
    "whole_image_probs",
]

FLOOR = 1e-12
"""Smallest confidence a baseline writes (lower ones are left out of the string)."""


def baseline_predictions(prediction: str, image_probs: Sequence[float]) -> str:
    """Every cell (mask) of ``prediction`` with the same per-class confidences
    ``image_probs`` (19 values): the image-level baseline on the same segmentation.

    >>> baseline_predictions("3 0.7 AA", [0.0] * 2 + [0.125] + [0.0] * 16)
    '2 0.125 AA'
    """
    from hpa_kit.submission import cells_prediction_string, submission_cells

    masks, _ = submission_cells(prediction)
    probs = [float(p) for p in image_probs]
    by_cell = {cell: probs for cell in range(1, len(masks) + 1)}
    mask_by_cell = {cell: mask for cell, mask in enumerate(masks, start=1)}
    return cells_prediction_string(mask_by_cell, by_cell, floor=FLOOR)


def _per_row(
    submission: pd.DataFrame, probs_of: Callable[[str, np.ndarray], Sequence[float]]
) -> dict[str, str]:
    """id -> baseline string, with ``probs_of(id, cell probabilities)`` per image."""
    from hpa_kit.submission import is_placeholder, submission_cells

    out: dict[str, str] = {}
    for row in submission.itertuples(index=False):
        masks, probs = submission_cells(row.PredictionString)
        if is_placeholder(masks, int(row.ImageHeight), int(row.ImageWidth)):
            out[row.ID] = row.PredictionString
        else:
            out[row.ID] = baseline_predictions(row.PredictionString, probs_of(row.ID, probs))
    return out


def image_baseline(
    submission: pd.DataFrame, image_probs: Mapping[str, Sequence[float]]
) -> dict[str, str]:
    """id -> PredictionString giving every cell of ``submission`` (a table as
    :func:`hpa_kit.submission.read_submission` returns) its image's ``image_probs[id]``.

    >>> import pandas as pd
    >>> sub = pd.DataFrame({"ID": ["a"], "ImageWidth": [4], "ImageHeight": [4],
    ...                     "PredictionString": ["1 0.9 AA 1 0.8 BB"]})
    >>> image_baseline(sub, {"a": [0.0] * 18 + [0.5]})
    {'a': '18 0.5 AA 18 0.5 BB'}
    """
    return _per_row(submission, lambda image_id, _: image_probs[image_id])


def cell_mean_baseline(submission: pd.DataFrame) -> dict[str, str]:
    """id -> PredictionString giving every cell of ``submission`` the mean of its image's
    cell confidences (a class a cell lacks counts as 0).

    >>> import pandas as pd
    >>> sub = pd.DataFrame({"ID": ["a"], "ImageWidth": [4], "ImageHeight": [4],
    ...                     "PredictionString": ["1 0.5 AA 2 0.25 BB"]})
    >>> cell_mean_baseline(sub)
    {'a': '1 0.25 AA 2 0.125 AA 1 0.25 BB 2 0.125 BB'}
    """
    return _per_row(submission, lambda _, probs: probs.mean(axis=0))


def whole_image_probs(
    images_dir: str | os.PathLike,
    ids: Iterable[str],
    model: Any,
    config: Any,
    *,
    tta: str = "seed",
) -> dict[str, np.ndarray]:
    """id -> the classifier's 19 probabilities for the whole image (all four channels read,
    resized with area interpolation to ``config.input_size``, the checkpoint's channels taken,
    ``tta`` as for cells; :func:`hpa_kit.predict.classify_crops` on the model's device).

    ``model, config``: a loaded classifier (:func:`hpa_kit.model.load_classifier`).
    """
    from hpa_kit.io import CHANNELS, read_image, resize_area
    from hpa_kit.predict import classify_crops

    out = {}
    for image_id in ids:
        image = read_image(images_dir, image_id, channels=CHANNELS)
        whole = resize_area(image, config.input_size)[None]
        out[image_id] = classify_crops(whole, model, config, tta=tta, amp=False)[0]
    return out

"""Cell-level truth for training crops of synthetic images: the oracle of weak-label methods.

Measurement only. Real training data has image-level labels; synthetic data
(:func:`hpa_kit.synth.write_dataset`) also keeps every cell's classes (``masks/{id}_cells.png``,
the true label image, and ``truth.csv``, every true ``(cell, class)`` as ``class 1 mask``).
The oracle gives each training crop the classes of the true cell it overlaps, so training
on the same crops with these labels shows how much better crop labels could make a model.

Matching (:func:`match_cells`): a segmented cell and a true cell match when their IoU is at
least ``threshold`` (0.5: then every cell has at most one partner, since two cells cannot
both cover more than half of a third); a crop without a match keeps its image's labels.

>>> found = np.array([[1, 1, 0, 2], [1, 1, 0, 2]], dtype=np.int32)
>>> truth = np.array([[5, 5, 5, 0], [5, 5, 0, 0]], dtype=np.int32)
>>> match_cells(found, truth)  # cell 1: IoU 4/5 with 5; cell 2 overlaps nothing
{1: 5}
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["cell_classes", "match_cells", "oracle_labels"]

_CROP_CELL = re.compile(r"_c(\d+)$")


def match_cells(found: np.ndarray, truth: np.ndarray, *, threshold: float = 0.5) -> dict[int, int]:
    """``{found cell: true cell}`` for the pairs of two label images with IoU >= ``threshold``.

    Pairs are taken by decreasing IoU, each cell at most once (0 is background).
    """
    found = np.asarray(found)
    truth = np.asarray(truth)
    if found.shape != truth.shape or found.ndim != 2:
        raise ValueError(
            f"need two 2-D label images of one shape, got {found.shape}, {truth.shape}"
        )
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    f = found.ravel().astype(np.int64)
    t = truth.ravel().astype(np.int64)
    pairs, inter = np.unique(np.stack([f, t])[:, (f > 0) & (t > 0)], axis=1, return_counts=True)
    area_f = dict(zip(*np.unique(f, return_counts=True), strict=True))
    area_t = dict(zip(*np.unique(t, return_counts=True), strict=True))
    candidates = []
    for (a, b), n in zip(pairs.T.tolist(), inter.tolist(), strict=True):
        iou = n / (area_f[a] + area_t[b] - n)
        if iou >= threshold:
            candidates.append((-iou, a, b))
    out: dict[int, int] = {}
    used: set[int] = set()
    for _, a, b in sorted(candidates):
        if a not in out and b not in used:
            out[a] = b
            used.add(b)
    return out


def cell_classes(prediction: str, truth: np.ndarray) -> dict[int, tuple[int, ...]]:
    """``{true cell: sorted classes}`` from a ``truth.csv`` PredictionString (``class 1 mask``
    triplets) and the true label image ``truth`` (the cell of a mask is the label it covers)."""
    from hpa_kit.rle import decode_binary_mask
    from hpa_kit.submission import parse_prediction_string

    height, width = truth.shape
    cells: dict[str, int] = {}
    classes: dict[int, set[int]] = {}
    for cls, _, mask in parse_prediction_string(prediction):
        if mask not in cells:
            covered = truth[decode_binary_mask(mask, height, width)]
            covered = covered[covered > 0]
            cells[mask] = int(np.bincount(covered).argmax()) if covered.size else 0
        if cells[mask]:
            classes.setdefault(cells[mask], set()).add(int(cls))
    return {cell: tuple(sorted(v)) for cell, v in sorted(classes.items())}


def oracle_labels(
    crops: pd.DataFrame,
    dataset: str | os.PathLike,
    *,
    segmenter: Any,
    threshold: float = 0.5,
) -> tuple[list[str], dict[str, Any]]:
    """The oracle ``Label`` of every crop of ``crops`` (columns ``ID``, ``Label``, ``image``
    and ``cell``, or crop ids ending in ``_c{cell}`` as :func:`hpa_kit.demo.write_cell_crops`
    names them), and counts.

    ``dataset`` is a :func:`~hpa_kit.synth.write_dataset` folder (``images/``, ``masks/``,
    ``truth.csv``); each image is segmented again with ``segmenter`` (the one that cut the
    crops: deterministic, so the same cells) and its cells matched to the true cells
    (:func:`match_cells`). Returns ``(labels, {"crops", "matched", "changed"})``.
    """
    from hpa_kit.io import CHANNELS, read_image, read_label_image
    from hpa_kit.submission import read_submission

    dataset = Path(dataset)
    truth_rows = read_submission(dataset / "truth.csv").set_index("ID")["PredictionString"]
    cells = _crop_cells(crops)
    labels = list(crops["Label"].astype(str))
    matched = changed = 0
    for image_id, rows in crops.groupby("image", sort=False).groups.items():
        image = read_image(dataset / "images", str(image_id), channels=CHANNELS)
        _, found = segmenter.segment([image])[0]
        truth = read_label_image(dataset / "masks" / f"{image_id}_cells.png")
        pairs = match_cells(found, truth, threshold=threshold)
        classes = cell_classes(truth_rows.loc[str(image_id)], truth)
        for row in crops.index.get_indexer(rows):
            true_cell = pairs.get(int(cells[row]))
            if true_cell is None or true_cell not in classes:
                continue
            matched += 1
            text = "|".join(str(c) for c in classes[true_cell])
            changed += text != labels[row]
            labels[row] = text
    return labels, {"crops": len(labels), "matched": matched, "changed": changed}


def _crop_cells(crops: pd.DataFrame) -> np.ndarray:
    if "cell" in crops.columns:
        return crops["cell"].to_numpy(dtype=np.int64)
    out = []
    for crop_id in crops["ID"].astype(str):
        found = _CROP_CELL.search(crop_id)
        if found is None:
            raise ValueError(
                f"crop id {crop_id!r} does not end in _c<cell> and there is no cell column"
            )
        out.append(int(found.group(1)))
    return np.asarray(out, dtype=np.int64)

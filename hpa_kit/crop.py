"""Per-cell crops for an image-level classifier.

Data contract:

- ``image``: ``H x W x C`` ``uint8`` (any channel order; the crops keep it);
- ``labels``: ``H x W`` integer label image, 0 = background, 1..N = cells (ids may skip);
- a crop is the cell's *bounding square* (side = the larger side of its bounding box), widened
  on every side by ``margin`` times that side (rounded half up), centred on the bounding box; parts of
  the square outside the image are zero (padding at image edges); with ``mask_others=True``
  every pixel that is not the cell's own (background and other cells) is zero too; the square
  is then resized to ``size x size`` (``cv2.INTER_AREA`` when shrinking, ``INTER_LINEAR`` when
  enlarging);
- boxes are ``(r0, c0, r1, c1)``, half-open, in image pixels: ``boxes`` is the cell's tight
  bounding box, ``windows`` the square that was cut (it may reach outside the image).

Per-cell work goes through :func:`scipy.ndimage.find_objects` slices: no full-image mask per
cell is ever built. :func:`write_cell_crops` segments a table of images and writes each cell's
crop as an image of its own, labelled with its image's labels (the weak labels of training).

>>> import numpy as np
>>> image = np.arange(1, 17, dtype=np.uint8).reshape(4, 4, 1)
>>> labels = np.array([[0, 0, 0, 0],
...                    [0, 1, 1, 0],
...                    [0, 1, 0, 0],
...                    [0, 0, 0, 2]], dtype=np.int32)
>>> out = crop_cells(image, labels, size=2, margin=0.0)
>>> out.cell_ids.tolist(), out.boxes.tolist()
([1, 2], [[1, 1, 3, 3], [3, 3, 4, 4]])
>>> out.crops[0, :, :, 0].tolist()
[[6, 7], [10, 0]]
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["CellCrops", "crop_cells", "square_window", "write_cell_crops"]


class CellCrops(NamedTuple):
    """The crops of one image: ``crops (N, S, S, C) uint8``, ``cell_ids (N,) int32`` ascending,
    ``boxes (N, 4) int64`` tight bounding boxes and ``windows (N, 4) int64`` cut squares,
    both ``(r0, c0, r1, c1)`` half-open."""

    crops: np.ndarray
    cell_ids: np.ndarray
    boxes: np.ndarray
    windows: np.ndarray


def square_window(
    box: tuple[int, int, int, int], *, margin: float = 0.0
) -> tuple[int, int, int, int]:
    """The square ``(r0, c0, r1, c1)`` cut around a bounding box ``box`` (half-open).

    Its side is ``L = m + 2 * floor(margin * m + 0.5)`` with ``m`` the larger side of the box; it is
    centred on the box (any odd pixel of slack goes below / right). It may extend outside the
    image.

    >>> square_window((10, 20, 14, 22))
    (10, 19, 14, 23)
    >>> square_window((0, 0, 10, 4), margin=0.1)
    (-1, -4, 11, 8)
    """
    r0, c0, r1, c1 = (int(v) for v in box)
    if r1 <= r0 or c1 <= c0:
        raise ValueError(f"empty box {box}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    m = max(r1 - r0, c1 - c0)
    side = m + 2 * int(np.floor(margin * m + 0.5))
    top = r0 - (side - (r1 - r0)) // 2
    left = c0 - (side - (c1 - c0)) // 2
    return top, left, top + side, left + side


def _resize(square: np.ndarray, size: int) -> np.ndarray:
    import cv2

    side = square.shape[0]
    if side == size:
        return square
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    channels = square.shape[2]
    if channels <= 4:
        out = cv2.resize(square, (size, size), interpolation=interp)
        return out.reshape(size, size, channels)
    planes = [
        cv2.resize(square[:, :, k], (size, size), interpolation=interp) for k in range(channels)
    ]
    return np.stack(planes, axis=-1)


def crop_cells(
    image: np.ndarray,
    labels: np.ndarray,
    *,
    size: int,
    margin: float = 0.1,
    mask_others: bool = True,
) -> CellCrops:
    """Crop every cell of ``labels`` out of ``image`` and resize it to ``size x size``.

    ``margin`` widens the cell's bounding square by that fraction of its side on each side;
    ``mask_others`` zeroes every pixel of the square that is not this cell's (background
    included). See the module docstring for the exact rules.

    >>> import numpy as np
    >>> image = np.full((3, 5, 2), 9, dtype=np.uint8)
    >>> labels = np.zeros((3, 5), dtype=np.int32); labels[2, 3:5] = 4
    >>> out = crop_cells(image, labels, size=2, margin=0.0, mask_others=False)
    >>> out.cell_ids.tolist(), out.windows.tolist()
    ([4], [[2, 3, 4, 5]])
    >>> out.crops[0, :, :, 1].tolist()
    [[9, 9], [0, 0]]
    """
    import cv2
    from scipy import ndimage

    image = np.asarray(image)
    labels = np.asarray(labels)
    if image.ndim != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"image must be H x W x C uint8, got shape {image.shape} dtype {image.dtype}"
        )
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels must be a 2-D integer array, got shape {labels.shape} dtype {labels.dtype}"
        )
    if labels.shape != image.shape[:2]:
        raise ValueError(
            f"labels shape {labels.shape} does not match image shape {image.shape[:2]}"
        )
    if int(size) < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if labels.size and labels.min() < 0:
        raise ValueError("labels must be >= 0 (0 = background)")
    size = int(size)
    height, width, channels = image.shape
    slices = ndimage.find_objects(labels) if labels.size else []

    ids: list[int] = []
    boxes: list[tuple[int, int, int, int]] = []
    windows: list[tuple[int, int, int, int]] = []
    crops: list[np.ndarray] = []
    for index, sl in enumerate(slices):
        if sl is None:
            continue
        cell_id = index + 1
        box = (sl[0].start, sl[1].start, sl[0].stop, sl[1].stop)
        top, left, bottom, right = square_window(box, margin=margin)
        side = bottom - top
        # The part of the window inside the image, and where it lands in the square.
        r0, c0 = max(top, 0), max(left, 0)
        r1, c1 = min(bottom, height), min(right, width)
        square = np.zeros((side, side, channels), dtype=np.uint8)
        patch = image[r0:r1, c0:c1]
        if mask_others:
            own = (labels[r0:r1, c0:c1] == cell_id).view(np.uint8)
            patch = cv2.bitwise_and(patch, patch, mask=own).reshape(patch.shape)
        square[r0 - top : r1 - top, c0 - left : c1 - left] = patch
        ids.append(cell_id)
        boxes.append(box)
        windows.append((top, left, bottom, right))
        crops.append(_resize(square, size))

    return CellCrops(
        crops=np.stack(crops) if crops else np.zeros((0, size, size, channels), dtype=np.uint8),
        cell_ids=np.asarray(ids, dtype=np.int32),
        boxes=np.asarray(boxes, dtype=np.int64).reshape(-1, 4),
        windows=np.asarray(windows, dtype=np.int64).reshape(-1, 4),
    )


def write_cell_crops(
    images_dir: str | os.PathLike,
    table: pd.DataFrame,
    out: str | os.PathLike,
    *,
    segmenter: Any,
    size: int,
    margin: float = 0.1,
    channels: Sequence[str] = ("red", "green", "blue"),
    progress: bool = False,
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Segment each image of ``table`` (``ID``, ``Label``, optional ``fold``) and write every
    cell's crop as an image of its own, labelled with its image's labels (weak labels).

    Images are read from ``images_dir`` (all four channels, :func:`hpa_kit.io.read_image`) and
    segmented by ``segmenter`` (a :class:`hpa_kit.segment.Segmenter`). Crops are cut as the
    predictor cuts them (:func:`crop_cells`, ``size``, ``margin``, other cells masked) and
    written as ``out/{image}_c{cell:04d}_{color}.png`` for each of ``channels``.
    Returns ``(crops table with ID, Label, image and fold if given, failures id -> cause)``;
    an image that cannot be read, or in which no cell is found, is recorded as a failure and
    the others go on.
    """
    import pandas as pd

    from hpa_kit.io import CHANNELS, check_channels
    from hpa_kit.progress import progress_bar

    channels = check_channels(channels)
    index = [CHANNELS.index(c) for c in channels]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    failures: dict[str, str] = {}
    has_fold = "fold" in table.columns
    records = table.to_dict("records")
    for record in progress_bar(records, enabled=progress, desc="crops", unit="image"):
        image_id = str(record["ID"])
        try:
            cell_ids = _write_image_crops(
                images_dir, image_id, out, segmenter, size=size, margin=margin, index=index
            )
        except (OSError, ValueError) as exc:
            failures[image_id] = f"{type(exc).__name__}: {exc}"
            continue
        for cell in cell_ids:
            row = {"ID": f"{image_id}_c{cell:04d}", "Label": record["Label"], "image": image_id}
            if has_fold:
                row["fold"] = int(record["fold"])
            rows.append(row)
    columns = ["ID", "Label", "image"] + (["fold"] if has_fold else [])
    return pd.DataFrame(rows, columns=columns), failures


def _write_image_crops(
    images_dir: str | os.PathLike,
    image_id: str,
    out: Path,
    segmenter: Any,
    *,
    size: int,
    margin: float,
    index: Sequence[int],
) -> list[int]:
    """Segment one image and write its cells' crops (the channels at ``index`` of
    :data:`hpa_kit.io.CHANNELS`); returns the cell ids written."""
    from hpa_kit.io import CHANNELS, read_image, write_channels

    channels = tuple(CHANNELS[i] for i in index)
    image = read_image(images_dir, image_id, channels=CHANNELS)
    _, cells = segmenter.segment([image])[0]
    result = crop_cells(image, cells, size=size, margin=margin, mask_others=True)
    if not result.cell_ids.size:
        raise ValueError("no cell found")
    for cell, crop in zip(result.cell_ids, result.crops, strict=True):
        write_channels(out, f"{image_id}_c{int(cell):04d}", crop[..., index], channels=channels)
    return [int(cell) for cell in result.cell_ids]

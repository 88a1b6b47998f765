"""Pictures of HPA images: colour composites, cell outlines and per-cell text.

Data contract
-------------
- ``image``: ``(height, width, C)`` ``uint8``, channels named by ``channels`` (default
  :data:`hpa_kit.io.CHANNELS`, RGBY). Known names: ``red``, ``green``, ``blue``, ``yellow``.
- ``rgb``: ``(height, width, 3)`` ``uint8`` in R, G, B order (the functions here return new
  arrays and never modify their inputs; :func:`save_png` converts to OpenCV's BGR on write).
- ``labels``: 2-D integer label image of the same height and width, 0 = background,
  1..N = cells. Per-cell work goes through ``scipy.ndimage.find_objects`` slices.

Colouring (the usual HPA composite)
-----------------------------------
``R = red + yellow // 2``, ``G = green + yellow // 2``, ``B = blue``, each clipped to 255:
red microtubules, green protein, blue nuclei, and the yellow ER shown as red + green.

Outlines
--------
A pixel is an outline pixel when it belongs to a cell (label > 0) and one of its four
neighbours inside the image has a different label (another cell or background). Outlines are
therefore drawn on the cells' own border pixels, never on background, and the image border is
not a cell edge.

>>> labels = np.array([[1, 1, 0], [1, 1, 2], [1, 1, 2]], dtype=np.int32)
>>> find_outlines(labels).astype(int).tolist()
[[0, 1, 0], [0, 1, 1], [0, 1, 1]]
>>> composite(np.array([[[10, 20, 30, 40]]], dtype=np.uint8)).tolist()
[[[30, 40, 30]]]

Text
----
Classes are written by their short names (:data:`hpa_kit.labels.SHORT_NAMES`); a text block
is centred on its cell and shifted just enough to lie wholly inside the image, so a cell cut
by the image edge keeps a readable label.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from hpa_kit.io import CHANNELS
from hpa_kit.outputs import atomic_path

__all__ = [
    "annotate_cells",
    "composite",
    "draw_outlines",
    "find_outlines",
    "COMPARISON_TITLES",
    "overlay",
    "prediction_vs_truth",
    "save_png",
    "side_by_side",
]

_KNOWN = ("red", "green", "blue", "yellow")

COMPARISON_TITLES = ("predicted: cell id, top classes", "truth: true classes")
"""Legend of :func:`prediction_vs_truth`'s two panels (left, right)."""


def _cv2():
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover - cv2 is a hard dependency
        raise ImportError("hpa_kit.viz needs OpenCV: pip install opencv-python-headless") from exc
    return cv2


def _check_rgb(rgb: np.ndarray, name: str = "rgb") -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(
            f"{name} must be a (height, width, 3) uint8 array, got shape {rgb.shape} "
            f"dtype {rgb.dtype}"
        )
    return rgb


def _check_labels(labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels must be a 2-D integer label image, got shape {labels.shape} "
            f"dtype {labels.dtype}"
        )
    if labels.shape != tuple(shape[:2]):
        raise ValueError(
            f"labels shape {labels.shape} does not match the image's (height, width) "
            f"{tuple(shape[:2])}"
        )
    if labels.size and labels.min() < 0:
        raise ValueError(f"labels must be >= 0, got minimum {labels.min()}")
    return labels


def composite(image: np.ndarray, *, channels: Sequence[str] = CHANNELS) -> np.ndarray:
    """RGB composite of an HPA image (yellow added as half red + half green, clipped).

    Channels absent from ``channels`` contribute nothing, so an RGB image
    (``channels=("red", "green", "blue")``) is returned unchanged.

    >>> px = np.array([[[100, 0, 0, 255], [250, 9, 7, 20]]], dtype=np.uint8)
    >>> composite(px).tolist()
    [[[227, 127, 0], [255, 19, 7]]]
    """
    image = np.asarray(image)
    channels = tuple(channels)
    if image.ndim != 3 or image.dtype != np.uint8 or image.shape[2] != len(channels):
        raise ValueError(
            f"image must be (height, width, {len(channels)}) uint8 for channels {channels}, "
            f"got shape {image.shape} dtype {image.dtype}"
        )
    unknown = [c for c in channels if c not in _KNOWN]
    if unknown or len(set(channels)) != len(channels):
        raise ValueError(f"channels must be distinct names from {_KNOWN}, got {channels}")
    height, width = image.shape[:2]
    out = np.zeros((height, width, 3), dtype=np.uint16)
    index = {name: i for i, name in enumerate(channels)}
    for plane, name in enumerate(("red", "green", "blue")):
        if name in index:
            out[..., plane] = image[..., index[name]]
    if "yellow" in index:
        half = image[..., index["yellow"]] // 2
        out[..., 0] += half
        out[..., 1] += half
    return np.minimum(out, 255).astype(np.uint8)


def find_outlines(labels: np.ndarray) -> np.ndarray:
    """Boolean mask of cell pixels with a 4-neighbour of a different label (see module doc).

    >>> find_outlines(np.array([[0, 0, 0], [0, 3, 0], [0, 0, 0]])).astype(int).tolist()
    [[0, 0, 0], [0, 1, 0], [0, 0, 0]]
    >>> find_outlines(np.array([[2, 2, 2, 2], [2, 1, 1, 2]])).astype(int).tolist()
    [[0, 1, 1, 0], [1, 1, 1, 1]]
    """
    from hpa_kit._boundary import label_boundaries

    return label_boundaries(labels, connectivity=4, background=True)


def draw_outlines(
    rgb: np.ndarray,
    labels: np.ndarray,
    *,
    color: tuple[int, int, int] = (255, 255, 255),
    thickness: int = 1,
) -> np.ndarray:
    """A copy of ``rgb`` with the outline pixels of ``labels`` set to ``color``.

    ``thickness`` > 1 grows the outline by ``thickness - 1`` pixels (square dilation), which
    keeps outlines visible when a large image is shown scaled down.

    >>> rgb = np.zeros((2, 3, 3), dtype=np.uint8)
    >>> draw_outlines(rgb, np.array([[0, 5, 5], [0, 5, 5]]), color=(9, 8, 7))[..., 0].tolist()
    [[0, 9, 0], [0, 9, 0]]
    """
    rgb = _check_rgb(rgb)
    labels = _check_labels(labels, rgb.shape)
    if thickness < 1:
        raise ValueError(f"thickness must be >= 1, got {thickness}")
    mask = find_outlines(labels)
    if thickness > 1:
        cv2 = _cv2()
        kernel = np.ones((2 * thickness - 1, 2 * thickness - 1), dtype=np.uint8)
        mask = cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)
    out = rgb.copy()
    out[mask] = np.asarray(color, dtype=np.uint8)
    return out


def _default_font_scale(shape: tuple[int, ...]) -> float:
    return max(0.35, min(shape[0], shape[1]) / 1400.0)


def annotate_cells(
    rgb: np.ndarray,
    labels: np.ndarray,
    texts: Mapping[int, str],
    *,
    color: tuple[int, int, int] = (255, 255, 255),
    font_scale: float | None = None,
) -> np.ndarray:
    """A copy of ``rgb`` with ``texts[cell]`` written at each cell's centroid.

    Lines of a text (split on ``"\\n"``) are centred on the centroid and drawn with a dark
    edge so they read on any background; a block that would cross the image edge is moved
    inside it. ``font_scale`` defaults to one that grows with the
    image (0.35 at 490 px and below, about 1.5 at 2048 px). Raises ``ValueError`` for a
    cell id that is not in ``labels``.
    """
    rgb = _check_rgb(rgb)
    labels = _check_labels(labels, rgb.shape)
    cv2 = _cv2()
    from scipy import ndimage as ndi

    out = rgb.copy()
    if not texts:
        return out
    scale = _default_font_scale(rgb.shape) if font_scale is None else float(font_scale)
    thickness = max(1, round(scale * 1.5))
    objects = ndi.find_objects(labels.astype(np.int32, copy=False))
    missing = [int(c) for c in texts if not (0 < int(c) <= len(objects) and objects[int(c) - 1])]
    if missing:
        raise ValueError(f"cells {sorted(missing)} have texts but are not in the label image")
    font = cv2.FONT_HERSHEY_SIMPLEX
    for cell, text in sorted(texts.items()):
        cell = int(cell)
        sl = objects[cell - 1]
        rows, cols = np.nonzero(labels[sl] == cell)
        centre = (rows.mean() + sl[0].start, cols.mean() + sl[1].start)
        lines = str(text).split("\n")
        origins, block = _text_block(lines, font, scale, thickness)
        top, left = _place(block, centre, labels.shape)
        for line, (x, y) in zip(lines, origins, strict=True):
            org = (left + x, top + y)
            cv2.putText(out, line, org, font, scale, (0, 0, 0), thickness + 2, cv2.LINE_AA)
            cv2.putText(
                out, line, org, font, scale, tuple(int(v) for v in color), thickness, cv2.LINE_AA
            )
    return out


def _text_block(
    lines: Sequence[str], font: int, scale: float, thickness: int
) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """Origins of ``lines`` (each centred under the widest) relative to the top left of the
    pixels they ink, dark edge included, and that block's ``(height, width)``.

    The block is measured by drawing it, not from ``cv2.getTextSize``: the drawn text,
    anti-aliased with its dark edge, reaches several pixels past the reported box."""
    cv2 = _cv2()
    sizes = [cv2.getTextSize(line, font, scale, thickness) for line in lines]
    line_h = max(h + base for (_, h), base in sizes) + thickness
    block_w = max(w for (w, _), _ in sizes)
    margin = 2 * line_h + 2 * thickness
    origins = [
        (margin + (block_w - w) // 2, margin + line_h * k + h)
        for k, ((w, h), _) in enumerate(sizes)
    ]
    canvas = np.zeros((line_h * len(lines) + 2 * margin, block_w + 2 * margin), np.uint8)
    for line, org in zip(lines, origins, strict=True):
        cv2.putText(canvas, line, org, font, scale, 255, thickness + 2, cv2.LINE_AA)
    rows, cols = np.nonzero(canvas)
    if rows.size == 0:  # blank text
        return origins, (0, 0)
    r0, c0 = int(rows.min()), int(cols.min())
    block = (int(rows.max()) - r0 + 1, int(cols.max()) - c0 + 1)
    return [(x - c0, y - r0) for x, y in origins], block


def _place(
    block: tuple[int, int], centre: tuple[float, float], shape: tuple[int, int]
) -> tuple[int, int]:
    """Top left ``(row, col)`` of a ``block`` centred on ``centre``, moved as a whole to lie
    at least one pixel inside an image of ``shape``; a block too large for the image starts at
    its top left corner.

    >>> _place((10, 20), (50.0, 50.0), (100, 100)), _place((10, 20), (2.0, 95.0), (100, 100))
    ((45, 40), (1, 79))
    """
    (block_h, block_w), (height, width) = block, shape
    top = max(min(round(centre[0] - block_h / 2.0), height - 1 - block_h), 1)
    left = max(min(round(centre[1] - block_w / 2.0), width - 1 - block_w), 1)
    return top, left


def _cell_text(cell: int, probs: Sequence[float] | None, top_k: int) -> str:
    from hpa_kit.labels import SHORT_NAMES

    if probs is None or top_k == 0:
        return str(cell)
    values = np.asarray(probs, dtype=np.float64).ravel()
    order = np.argsort(-values, kind="stable")[:top_k]
    return "\n".join([str(cell)] + [f"{SHORT_NAMES[c]} {values[c]:.2f}" for c in order])


def overlay(
    image: np.ndarray,
    labels: np.ndarray,
    *,
    probs: Mapping[int, Sequence[float]] | None = None,
    top_k: int = 2,
    channels: Sequence[str] = CHANNELS,
    thickness: int | None = None,
) -> np.ndarray:
    """Composite + white cell outlines + per-cell text, as one RGB array.

    Each cell is labelled with its id; with ``probs`` (cell id -> per-class probabilities,
    e.g. ``dict(zip(cell_ids, probs))`` from the predictor) the ``top_k`` classes follow as
    ``short name confidence`` lines (``Cytosol 0.91``, :data:`hpa_kit.labels.SHORT_NAMES`).
    ``thickness`` defaults to 1 px per 512 px of image side.
    """
    rgb = composite(image, channels=channels)
    labels = _check_labels(labels, rgb.shape)
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    if thickness is None:
        thickness = max(1, min(rgb.shape[0], rgb.shape[1]) // 512)
    rgb = draw_outlines(rgb, labels, thickness=thickness)
    present = np.unique(labels)
    present = present[present > 0]
    probs = {} if probs is None else {int(k): v for k, v in probs.items()}
    texts = {int(c): _cell_text(int(c), probs.get(int(c)), top_k) for c in present}
    return annotate_cells(rgb, labels, texts)


def save_png(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """Write an RGB (or 2-D grey) ``uint8`` array as PNG, atomically
    (:func:`hpa_kit.outputs.atomic_path`; the folder is created); returns the path."""
    cv2 = _cv2()
    array = np.asarray(rgb)
    if array.dtype != np.uint8 or not (
        array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)
    ):
        raise ValueError(
            f"save_png needs (height, width) or (height, width, 3) uint8, got shape "
            f"{array.shape} dtype {array.dtype} for {path}"
        )
    path = Path(path)
    bgr = array if array.ndim == 2 else np.ascontiguousarray(array[..., ::-1])
    ok, data = cv2.imencode(".png", bgr)
    if not ok:  # pragma: no cover - imencode fails only on invalid input
        raise OSError(f"could not encode PNG for {path}")
    with atomic_path(path) as temp:
        temp.write_bytes(data.tobytes())
    return path


def side_by_side(
    panels: Sequence[np.ndarray],
    *,
    titles: Sequence[str] | None = None,
    gap: int = 4,
    font_scale: float | None = None,
) -> np.ndarray:
    """RGB panels of one height in a row, ``gap`` white columns apart, with ``titles[i]``
    written in a dark strip above panel ``i`` (the legend of a comparison).

    >>> a, b = np.zeros((2, 3, 3), np.uint8), np.full((2, 1, 3), 9, np.uint8)
    >>> side_by_side([a, b], gap=1)[..., 0].tolist()
    [[0, 0, 0, 255, 9], [0, 0, 0, 255, 9]]
    """
    panels = [_check_rgb(p, f"panels[{i}]") for i, p in enumerate(panels)]
    if not panels or len({p.shape[0] for p in panels}) != 1:
        raise ValueError(
            f"side_by_side needs panels of one height, got {[p.shape[:2] for p in panels]}"
        )
    if gap < 0 or (titles is not None and len(titles) != len(panels)):
        raise ValueError(f"need gap >= 0 and one title per panel, got gap {gap}, {titles}")
    height = panels[0].shape[0]
    row: list[np.ndarray] = []
    for i, panel in enumerate(panels):
        if i:
            row.append(np.full((height, gap, 3), 255, dtype=np.uint8))
        row.append(panel)
    body = np.hstack(row)
    if titles is None:
        return body
    return np.vstack([_title_strip(panels, titles, gap, font_scale), body])


def _title_strip(
    panels: Sequence[np.ndarray], titles: Sequence[str], gap: int, font_scale: float | None
) -> np.ndarray:
    """A dark strip as wide as the row of ``panels``, each title at its panel's left."""
    cv2 = _cv2()
    font = cv2.FONT_HERSHEY_SIMPLEX
    scale = _default_font_scale(panels[0].shape) if font_scale is None else float(font_scale)
    thickness = max(1, round(scale * 1.5))
    sizes = [cv2.getTextSize(t, font, scale, thickness) for t in titles]
    text_h = max(h + base for (_, h), base in sizes)
    pad = max(2, text_h // 3)
    width = sum(p.shape[1] for p in panels) + gap * (len(panels) - 1)
    strip = np.full((text_h + 2 * pad, width, 3), 32, dtype=np.uint8)
    left = 0
    for panel, title, ((_, h), _) in zip(panels, titles, sizes, strict=True):
        org = (left + pad, pad + h)
        cv2.putText(strip, title, org, font, scale, (255, 255, 255), thickness, cv2.LINE_AA)
        left += panel.shape[1] + gap
    return strip


def prediction_vs_truth(
    image: np.ndarray,
    prediction: str,
    truth: str,
    *,
    top_k: int = 2,
    channels: Sequence[str] = CHANNELS,
) -> np.ndarray:
    """One image's predicted cells beside its true cells, as one RGB picture.

    ``prediction`` and ``truth`` are PredictionStrings of the image (a submission row and a
    truth row, :mod:`hpa_kit.submission`). Left: :func:`overlay` of the predicted cells (id,
    then the ``top_k`` classes by short name and confidence). Right: the true cells' outlines
    and the short names of their classes. A legend (:data:`COMPARISON_TITLES`) sits above.
    """
    from hpa_kit.labels import SHORT_NAMES
    from hpa_kit.submission import prediction_label_image

    height, width = np.asarray(image).shape[:2]
    labels, probs = prediction_label_image(prediction, height, width)
    probs_of = {cell: p for cell, p in enumerate(probs, start=1)}
    left = overlay(image, labels, probs=probs_of, top_k=top_k, channels=channels)
    truth_labels, true_probs = prediction_label_image(truth, height, width)
    texts = {
        cell: "\n".join(SHORT_NAMES[c] for c in np.flatnonzero(p > 0))
        for cell, p in enumerate(true_probs, start=1)
    }
    rgb = draw_outlines(composite(image, channels=channels), truth_labels)
    right = annotate_cells(rgb, truth_labels, texts)
    return side_by_side([left, right], titles=COMPARISON_TITLES)

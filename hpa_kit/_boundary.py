"""The one rule for "a neighbour has another label" on a label image.

Used by :func:`hpa_kit.viz.find_outlines` (outlines drawn on the cells' own edge pixels), by
the classical predictor (lines where two cells touch) and by the labelling's hole filling
(hpacellseg's boundary cut, ``find_boundaries(mode="thick")`` on labelled pixels).

Contract: ``labels`` is a 2-D integer (or boolean) array; a pixel is a *cell* pixel when its
label is > 0, and only cell pixels are ever marked. ``connectivity`` 4 looks at the four edge
neighbours, 8 also at the diagonal ones. ``background=True`` counts a non-positive neighbour as
another label (the cell's edge against the background); ``background=False`` counts only
neighbours of another positive label (contacts between cells). Neighbours outside the image
never count: the image border is not a cell edge.

Speed: a cell pixel is unmarked when the minimum and maximum of its neighbourhood (itself
included) are equal: two OpenCV filters on float32 (exact for labels of magnitude below
2**24); shifted numpy comparisons otherwise (tests check that both agree).

>>> labels = np.array([[1, 1, 0], [1, 1, 2], [1, 1, 2]])
>>> label_boundaries(labels).astype(int).tolist()
[[0, 1, 0], [0, 1, 1], [0, 1, 1]]
>>> label_boundaries(labels, background=False).astype(int).tolist()
[[0, 0, 0], [0, 1, 1], [0, 1, 1]]
>>> label_boundaries(np.array([[1, 0], [0, 2]]), connectivity=8, background=False).astype(int)
array([[1, 0],
       [0, 1]])
"""

from __future__ import annotations

import numpy as np

__all__ = ["label_boundaries"]

_EXACT_FLOAT = 2**24  # integers of magnitude up to this are exact in float32
_CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.uint8)
_SQUARE = np.ones((3, 3), np.uint8)


def label_boundaries(
    labels: np.ndarray, *, connectivity: int = 4, background: bool = True
) -> np.ndarray:
    """Boolean mask of the cell pixels with a neighbour of another label (see module doc).

    >>> label_boundaries(np.array([[0, 0, 0], [0, 3, 0], [0, 0, 0]])).astype(int).tolist()
    [[0, 0, 0], [0, 1, 0], [0, 0, 0]]
    >>> label_boundaries(np.array([[5, 5], [5, 5]])).any()
    np.False_
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be a 2-D label image, got shape {labels.shape}")
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity!r}")
    if labels.size == 0:
        return np.zeros(labels.shape, bool)
    import cv2

    values = labels.astype(np.float32)
    smallest, largest = cv2.minMaxLoc(values)[:2]  # float32 keeps the side of +-2**24
    if not -_EXACT_FLOAT < smallest <= largest < _EXACT_FLOAT:
        return _shifted(labels, connectivity=connectivity, background=background)
    cells = labels > 0
    kernel = _CROSS if connectivity == 4 else _SQUARE
    # BORDER_REPLICATE only repeats a pixel's own or in-image neighbours' values
    high = cv2.dilate(values, kernel, borderType=cv2.BORDER_REPLICATE)
    if not background:  # a background neighbour must not lower the minimum
        values[~cells] = _EXACT_FLOAT
    low = cv2.erode(values, kernel, borderType=cv2.BORDER_REPLICATE)
    # both filters include the pixel itself: low <= label <= high, so a neighbour differs
    # exactly when the two differ
    return cells & (high != low)


def _shifted(labels: np.ndarray, *, connectivity: int, background: bool) -> np.ndarray:
    """:func:`label_boundaries` by shifted comparisons, for any label values."""
    pairs = [(np.s_[1:, :], np.s_[:-1, :]), (np.s_[:, 1:], np.s_[:, :-1])]
    if connectivity == 8:
        pairs += [(np.s_[1:, 1:], np.s_[:-1, :-1]), (np.s_[1:, :-1], np.s_[:-1, 1:])]
    out = np.zeros(labels.shape, bool)
    for sa, sb in pairs:
        a, b = labels[sa], labels[sb]
        differ = a != b
        if not background:
            differ &= (a > 0) & (b > 0)
        out[sa] |= differ
        out[sb] |= differ
    return out & (labels > 0)

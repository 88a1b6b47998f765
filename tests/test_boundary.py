"""Tests for hpa_kit._boundary.label_boundaries, the one "neighbour has another label" rule
(viz outlines, the classical predictor's contact lines, the labelling's boundary cut)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import segmentation

from hpa_kit._boundary import label_boundaries
from hpa_kit.segment import classical
from hpa_kit.viz import find_outlines

LABELS = np.array(
    [[1, 1, 0, 0],
     [1, 1, 0, 2],
     [0, 0, 2, 2],
     [3, 3, 2, 2]], np.int32)  # fmt: skip


def _naive(labels: np.ndarray, connectivity: int, background: bool) -> np.ndarray:
    """The rule pixel by pixel: a cell pixel with an in-image neighbour of another label."""
    steps = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    if connectivity == 8:
        steps += [(-1, -1), (-1, 1), (1, -1), (1, 1)]
    rows, cols = labels.shape
    out = np.zeros(labels.shape, bool)
    for r in range(rows):
        for c in range(cols):
            own = labels[r, c]
            if own <= 0:
                continue
            for dr, dc in steps:
                rr, cc = r + dr, c + dc
                if 0 <= rr < rows and 0 <= cc < cols:
                    other = labels[rr, cc]
                    if other != own and (background or other > 0):
                        out[r, c] = True
    return out


@pytest.mark.parametrize(
    ("connectivity", "background", "expected"),
    [
        (4, True, [[0, 1, 0, 0], [1, 1, 0, 1], [0, 0, 1, 0], [1, 1, 1, 0]]),
        (4, False, [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 1, 1, 0]]),
        (8, False, [[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 1, 1, 0]]),
        (8, True, [[0, 1, 0, 0], [1, 1, 0, 1], [0, 0, 1, 1], [1, 1, 1, 0]]),
    ],
)
def test_literal_label_image(connectivity, background, expected):
    got = label_boundaries(LABELS, connectivity=connectivity, background=background)
    assert got.dtype == bool
    assert got.astype(int).tolist() == expected
    np.testing.assert_array_equal(got, _naive(LABELS, connectivity, background))


def test_image_border_is_not_an_edge_and_background_is_never_marked():
    assert not label_boundaries(np.full((3, 5), 7)).any()
    assert not label_boundaries(np.zeros((3, 5), np.int32)).any()
    one_row = np.array([[0, 4, 4, 5, 5, 0]])
    assert label_boundaries(one_row).astype(int).tolist() == [[0, 1, 1, 1, 1, 0]]
    assert label_boundaries(one_row, background=False).astype(int).tolist() == [[0, 0, 1, 1, 0, 0]]
    assert label_boundaries(np.zeros((0, 4), np.int32)).shape == (0, 4)


def test_negative_values_are_background():
    labels = np.array([[-1, 2, 2], [-1, 2, 2]])
    assert label_boundaries(labels).astype(int).tolist() == [[0, 1, 0], [0, 1, 0]]
    assert not label_boundaries(labels, background=False).any()


@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("background", [True, False])
def test_opencv_path_equals_the_rule_and_the_numpy_path(connectivity, background):
    rng = np.random.default_rng(connectivity + int(background))
    for shape in [(1, 9), (9, 1), (2, 2), (23, 31), (40, 17)]:
        coarse = rng.integers(0, 5, (max(1, shape[0] // 4), max(1, shape[1] // 4)))
        labels = cv2.resize(coarse.astype(np.int32), shape[::-1], interpolation=cv2.INTER_NEAREST)
        labels[rng.random(shape) < 0.05] = 0
        expected = _naive(labels, connectivity, background)
        got = label_boundaries(labels, connectivity=connectivity, background=background)
        np.testing.assert_array_equal(got, expected)
        for far in (2**24, 2**40):  # past float32's exact integers: shifted comparisons
            huge = np.where(labels > 0, labels.astype(np.int64) + far, -far)
            np.testing.assert_array_equal(
                label_boundaries(huge, connectivity=connectivity, background=background), expected
            )


def test_equals_skimage_thick_boundaries_on_cells():
    rng = np.random.default_rng(3)
    labels = cv2.resize(
        rng.integers(0, 5, (6, 7)).astype(np.int32), (29, 23), interpolation=cv2.INTER_NEAREST
    )
    expected = (labels > 0) & segmentation.find_boundaries(labels, mode="thick")
    np.testing.assert_array_equal(label_boundaries(labels), expected)


def test_the_three_users_share_the_rule():
    np.testing.assert_array_equal(find_outlines(LABELS), label_boundaries(LABELS))
    np.testing.assert_array_equal(
        classical._touching(LABELS), label_boundaries(LABELS, background=False)
    )


def test_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        label_boundaries(np.zeros((2, 2, 2), np.int32))
    with pytest.raises(ValueError, match="connectivity"):
        label_boundaries(LABELS, connectivity=6)

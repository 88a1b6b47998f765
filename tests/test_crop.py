"""hpa_kit.crop: literal arrays with hand-computed crops."""

from __future__ import annotations

import numpy as np
import pytest

from hpa_kit.crop import crop_cells, square_window

# 5 x 6 image, one channel, pixel value = 10 * row + col + 1 (so every pixel is non-zero).
IMAGE = (np.arange(5)[:, None] * 10 + np.arange(6)[None, :] + 1).astype(np.uint8)[:, :, None]
LABELS = np.array(
    [
        [0, 0, 0, 0, 0, 3],
        [0, 1, 1, 0, 0, 3],
        [0, 1, 2, 2, 0, 0],
        [0, 0, 2, 2, 0, 0],
        [0, 0, 0, 0, 0, 0],
    ],
    dtype=np.int32,
)


def test_square_window_centres_and_widens():
    assert square_window((1, 1, 3, 3)) == (1, 1, 3, 3)
    # 4 rows x 2 cols: square of side 4, slack of 2 columns split 1 / 1.
    assert square_window((10, 20, 14, 22)) == (10, 19, 14, 23)
    # 1 row x 2 cols: odd slack (1 row) goes below.
    assert square_window((0, 3, 1, 5)) == (0, 3, 2, 5)
    # margin 0.25 of side 4 -> 1 pixel each side.
    assert square_window((10, 20, 14, 24), margin=0.25) == (9, 19, 15, 25)
    with pytest.raises(ValueError, match="empty box"):
        square_window((3, 3, 3, 5))
    with pytest.raises(ValueError, match="margin"):
        square_window((0, 0, 2, 2), margin=-0.1)


def test_crops_masked_literal():
    out = crop_cells(IMAGE, LABELS, size=2, margin=0.0)
    assert out.cell_ids.tolist() == [1, 2, 3]
    assert out.cell_ids.dtype == np.int32
    assert out.boxes.tolist() == [[1, 1, 3, 3], [2, 2, 4, 4], [0, 5, 2, 6]]
    # cell 3 is 2 x 1 at the right edge: square (0, 5)-(2, 7), column 6 outside the image.
    assert out.windows.tolist() == [[1, 1, 3, 3], [2, 2, 4, 4], [0, 5, 2, 7]]
    assert out.crops.shape == (3, 2, 2, 1) and out.crops.dtype == np.uint8
    # cell 1: pixels (1,1) (1,2) (2,1) are its own, (2,2) belongs to cell 2 -> 0.
    assert out.crops[0, :, :, 0].tolist() == [[12, 13], [22, 0]]
    # cell 2: (2,2) (2,3) (3,2) (3,3) all its own.
    assert out.crops[1, :, :, 0].tolist() == [[23, 24], [33, 34]]
    # cell 3: its two pixels, then the padding column.
    assert out.crops[2, :, :, 0].tolist() == [[6, 0], [16, 0]]


def test_crops_unmasked_keep_neighbours_and_background():
    out = crop_cells(IMAGE, LABELS, size=2, margin=0.0, mask_others=False)
    assert out.crops[0, :, :, 0].tolist() == [[12, 13], [22, 23]]
    # padding outside the image stays 0 even unmasked.
    assert out.crops[2, :, :, 0].tolist() == [[6, 0], [16, 0]]


def test_margin_pads_at_image_edges():
    # margin 0.5 of side 2 -> 1 pixel each side: cell 1's window is (0, 0)-(4, 4).
    out = crop_cells(IMAGE, LABELS, size=4, margin=0.5, mask_others=False)
    assert out.windows[0].tolist() == [0, 0, 4, 4]
    np.testing.assert_array_equal(out.crops[0, :, :, 0], IMAGE[0:4, 0:4, 0])
    # cell 3's window (-1, 4)-(3, 8): one padded row on top, two padded columns right.
    assert out.windows[2].tolist() == [-1, 4, 3, 8]
    expected = np.zeros((4, 4), dtype=np.uint8)
    expected[1:4, 0:2] = IMAGE[0:3, 4:6, 0]
    np.testing.assert_array_equal(out.crops[2, :, :, 0], expected)


def test_channels_kept_in_order_and_masked_together():
    image = np.stack([IMAGE[:, :, 0], 200 - IMAGE[:, :, 0], np.full((5, 6), 7, np.uint8)], axis=-1)
    image = image.astype(np.uint8)
    out = crop_cells(image, LABELS, size=2, margin=0.0)
    assert out.crops.shape == (3, 2, 2, 3)
    assert out.crops[0, :, :, 1].tolist() == [[188, 187], [178, 0]]
    assert out.crops[0, :, :, 2].tolist() == [[7, 7], [7, 0]]


def test_resize_down_area_and_up():
    image = np.zeros((4, 4, 1), dtype=np.uint8)
    image[:2, :2] = 100
    image[:2, 2:] = 200
    image[2:, :2] = 40
    image[2:, 2:] = 80
    labels = np.ones((4, 4), dtype=np.int32)
    down = crop_cells(image, labels, size=2, margin=0.0)
    assert down.crops[0, :, :, 0].tolist() == [[100, 200], [40, 80]]  # INTER_AREA: block means
    up = crop_cells(image[:2, :2], labels[:2, :2], size=5, margin=0.0)
    assert up.crops.shape == (1, 5, 5, 1)
    assert np.all(up.crops == 100)


def test_more_than_four_channels():
    image = np.repeat(IMAGE, 5, axis=2)
    out = crop_cells(image, LABELS, size=4, margin=0.0)
    ref = crop_cells(IMAGE, LABELS, size=4, margin=0.0)
    assert out.crops.shape == (3, 4, 4, 5)
    for k in range(5):
        np.testing.assert_array_equal(out.crops[..., k], ref.crops[..., 0])


def test_gaps_in_ids_and_no_cells():
    labels = np.where(LABELS == 2, 0, LABELS)  # ids 1 and 3 only
    out = crop_cells(IMAGE, labels, size=3)
    assert out.cell_ids.tolist() == [1, 3]
    empty = crop_cells(IMAGE, np.zeros((5, 6), np.int32), size=3)
    assert empty.crops.shape == (0, 3, 3, 1) and empty.crops.dtype == np.uint8
    assert empty.cell_ids.shape == (0,) and empty.boxes.shape == (0, 4)


def test_single_pixel_cell():
    labels = np.zeros((5, 6), np.int32)
    labels[4, 5] = 1
    out = crop_cells(IMAGE, labels, size=1, margin=0.0)
    assert out.boxes.tolist() == [[4, 5, 5, 6]]
    assert out.crops[0, 0, 0, 0] == IMAGE[4, 5, 0]


@pytest.mark.parametrize(
    ("image", "labels", "match"),
    [
        (IMAGE[:, :, 0], LABELS, "H x W x C uint8"),
        (IMAGE.astype(np.float32), LABELS, "H x W x C uint8"),
        (IMAGE, LABELS[:4], "does not match"),
        (IMAGE, LABELS.astype(np.float32), "integer"),
        (IMAGE, -LABELS, ">= 0"),
    ],
)
def test_bad_inputs(image, labels, match):
    with pytest.raises(ValueError, match=match):
        crop_cells(image, labels, size=4)


def test_bad_size():
    with pytest.raises(ValueError, match="size"):
        crop_cells(IMAGE, LABELS, size=0)

"""hpa_kit.viz: composite colours, outlines, per-cell text, overlays and PNG writing."""

from __future__ import annotations

import numpy as np
import pytest

from hpa_kit.viz import (
    annotate_cells,
    composite,
    draw_outlines,
    find_outlines,
    overlay,
    save_png,
)

# 0 = background; cells 1, 2 touch along a vertical border; 3 touches the image border only.
LABELS = np.array(
    [
        [0, 0, 0, 0, 0, 3, 3],
        [0, 1, 1, 2, 0, 3, 3],
        [0, 1, 1, 2, 0, 3, 3],
        [0, 1, 1, 2, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0],
    ],
    dtype=np.int32,
)
# Cell pixels with a 4-neighbour of another label; the image border is not an edge.
OUTLINE = np.array(
    [
        [0, 0, 0, 0, 0, 1, 0],
        [0, 1, 1, 1, 0, 1, 0],
        [0, 1, 1, 1, 0, 1, 1],
        [0, 1, 1, 1, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0],
    ],
    dtype=bool,
)


def test_composite_literal_pixels():
    image = np.array(
        [
            [[10, 20, 30, 40], [0, 0, 0, 255], [250, 9, 7, 20], [0, 200, 0, 200]],
        ],
        dtype=np.uint8,
    )
    # R = red + yellow // 2, G = green + yellow // 2, B = blue, clipped at 255
    expected = [[[30, 40, 30], [127, 127, 0], [255, 19, 7], [100, 255, 0]]]
    out = composite(image)
    assert out.dtype == np.uint8 and out.shape == (1, 4, 3)
    assert out.tolist() == expected


def test_composite_channel_order_and_rgb_passthrough():
    rgby = np.array([[[1, 2, 3, 4]]], dtype=np.uint8)
    # the same pixel stored in another order gives the same colour
    byrg = rgby[..., [2, 3, 0, 1]]
    assert composite(byrg, channels=("blue", "yellow", "red", "green")).tolist() == [[[3, 4, 3]]]
    rgb = np.array([[[5, 6, 7], [255, 0, 128]]], dtype=np.uint8)
    assert np.array_equal(composite(rgb, channels=("red", "green", "blue")), rgb)
    # a green-only image
    assert composite(np.array([[[9]]], dtype=np.uint8), channels=("green",)).tolist() == [
        [[0, 9, 0]]
    ]


@pytest.mark.parametrize(
    ("image", "channels"),
    [
        (np.zeros((2, 2, 3), np.uint8), ("red", "green", "blue", "yellow")),
        (np.zeros((2, 2, 4), np.uint16), ("red", "green", "blue", "yellow")),
        (np.zeros((2, 2), np.uint8), ("red",)),
        (np.zeros((2, 2, 2), np.uint8), ("red", "purple")),
        (np.zeros((2, 2, 2), np.uint8), ("red", "red")),
    ],
)
def test_composite_rejects_bad_input(image, channels):
    with pytest.raises(ValueError):
        composite(image, channels=channels)


def test_find_outlines_literal():
    assert np.array_equal(find_outlines(LABELS), OUTLINE)
    # one cell filling the image has no outline; a single-pixel cell is all outline
    assert not find_outlines(np.ones((3, 4), np.int32)).any()
    single = np.zeros((3, 3), np.int32)
    single[1, 1] = 7
    assert find_outlines(single).astype(int).tolist() == [[0, 0, 0], [0, 1, 0], [0, 0, 0]]


def test_draw_outlines_exactly_on_label_changes():
    rgb = np.full(LABELS.shape + (3,), 40, dtype=np.uint8)
    before = rgb.copy()
    out = draw_outlines(rgb, LABELS, color=(255, 0, 7))
    assert np.array_equal(rgb, before)  # input untouched
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert np.all(out[OUTLINE] == (255, 0, 7))
    assert np.all(out[~OUTLINE] == 40)


def test_draw_outlines_thickness_dilates():
    labels = np.zeros((5, 5), np.int32)
    labels[2, 2] = 1
    out = draw_outlines(np.zeros((5, 5, 3), np.uint8), labels, color=(1, 1, 1), thickness=2)
    expected = np.zeros((5, 5), int)
    expected[1:4, 1:4] = 1
    assert out[..., 0].tolist() == expected.tolist()
    with pytest.raises(ValueError):
        draw_outlines(np.zeros((5, 5, 3), np.uint8), labels, thickness=0)


def test_draw_outlines_shape_mismatch():
    with pytest.raises(ValueError, match="does not match"):
        draw_outlines(np.zeros((4, 7, 3), np.uint8), LABELS)
    with pytest.raises(ValueError, match="integer"):
        draw_outlines(np.zeros((5, 7, 3), np.uint8), LABELS.astype(float))


def _two_boxes() -> np.ndarray:
    labels = np.zeros((120, 200), np.int32)
    labels[10:110, 10:90] = 1
    labels[10:110, 110:190] = 2
    return labels


def test_annotate_cells_writes_near_centroid_only():
    labels = _two_boxes()
    rgb = np.zeros(labels.shape + (3,), np.uint8)
    out = annotate_cells(rgb, labels, {1: "1\n16:0.90"}, font_scale=0.4)
    changed = np.any(out != rgb, axis=2)
    assert changed.any()
    rows, cols = np.nonzero(changed)
    # text is centred on cell 1's centroid (59.5, 49.5) and stays off cell 2
    assert abs(rows.mean() - 59.5) < 8 and abs(cols.mean() - 49.5) < 8
    assert cols.max() < 110
    assert not rgb.any()  # input untouched
    assert np.array_equal(annotate_cells(rgb, labels, {}), rgb)


def test_annotate_cells_unknown_cell():
    with pytest.raises(ValueError, match=r"\[3\]"):
        annotate_cells(np.zeros((120, 200, 3), np.uint8), _two_boxes(), {3: "x"})


def test_overlay_shape_outlines_and_text():
    labels = _two_boxes()
    image = np.zeros(labels.shape + (4,), np.uint8)
    image[..., 2] = 60  # blue
    out = overlay(image, labels)
    assert out.shape == (120, 200, 3) and out.dtype == np.uint8
    outline = find_outlines(labels)
    # away from the text in the middle of each cell, outlines are white and the rest is blue
    border = outline.copy()
    border[30:90] = False
    assert border.sum() > 100
    assert np.all(out[border] == 255)
    plain = ~outline
    plain[40:80] = False
    assert np.all(out[plain] == (0, 0, 60))
    # per-cell probabilities add text lines
    probs = {1: np.eye(19)[16] * 0.9, 2: np.eye(19)[4] * 0.7}
    with_probs = overlay(image, labels, probs=probs, top_k=1)
    assert np.any(with_probs != out)
    assert np.array_equal(overlay(image, labels, probs=probs, top_k=0), out)


def test_save_png_round_trip(tmp_path):
    import cv2

    rgb = np.zeros((3, 5, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[2, 4] = (1, 2, 3)
    path = save_png(tmp_path / "sub" / "x.png", rgb)
    assert path.exists()
    back = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(back[..., ::-1], rgb)  # stored as BGR, read back as RGB
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert np.array_equal(cv2.imread(str(save_png(tmp_path / "g.png", grey)), 0), grey)
    with pytest.raises(ValueError, match="uint8"):
        save_png(tmp_path / "bad.png", rgb.astype(np.float32))
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["g.png", "sub", "x.png"]

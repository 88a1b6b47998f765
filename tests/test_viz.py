"""hpa_kit.viz: composite colours, outlines, per-cell text, overlays and PNG writing."""

from __future__ import annotations

import numpy as np
import pytest

from hpa_kit.viz import (
    COMPARISON_TITLES,
    annotate_cells,
    composite,
    draw_outlines,
    find_outlines,
    overlay,
    prediction_vs_truth,
    save_png,
    side_by_side,
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


# ---------------------------------------------------------------- text placement and legends


def _drawn(out: np.ndarray, background: int) -> np.ndarray:
    return np.any(out != background, axis=2)


@pytest.mark.parametrize("where", ["left", "right", "top", "bottom", "corner"])
def test_annotate_cells_keeps_a_border_cells_text_inside_the_image(where):
    text = "12\nNucl.memb. 0.81\nVesicles 0.12"
    # the reference: the same cell in the middle of a large image, where nothing is clipped
    big = np.zeros((300, 400), np.int32)
    big[140:160, 190:210] = 1
    grey = np.full(big.shape + (3,), 128, np.uint8)
    full = _drawn(annotate_cells(grey, big, {1: text}, font_scale=0.4), 128)
    # a small cell at the image border: its centred text would cross the edge
    labels = np.zeros((60, 120), np.int32)
    rows, cols = {
        "left": (slice(25, 35), slice(0, 4)),
        "right": (slice(25, 35), slice(116, 120)),
        "top": (slice(0, 3), slice(50, 60)),
        "bottom": (slice(57, 60), slice(50, 60)),
        "corner": (slice(0, 3), slice(116, 120)),
    }[where]
    labels[rows, cols] = 1
    rgb = np.full(labels.shape + (3,), 128, np.uint8)
    drawn = _drawn(annotate_cells(rgb, labels, {1: text}, font_scale=0.4), 128)
    # every pixel of the text (and its dark edge) is drawn: none fell outside the image
    assert drawn.sum() == full.sum() > 0
    assert not (drawn[0].any() or drawn[-1].any() or drawn[:, 0].any() or drawn[:, -1].any())
    # and it is the same picture, only moved
    r, c = np.nonzero(full)
    rr, cc = np.nonzero(drawn)
    moved = np.zeros_like(full)
    moved[r - r.min(), c - c.min()] = True
    again = np.zeros_like(full)
    again[rr - rr.min(), cc - cc.min()] = True
    assert np.array_equal(moved, again)


def test_annotate_cells_text_stays_centred_when_it_fits():
    labels = np.zeros((100, 100), np.int32)
    labels[40:60, 40:60] = 1
    rgb = np.zeros(labels.shape + (3,), np.uint8)
    rows, cols = np.nonzero(_drawn(annotate_cells(rgb, labels, {1: "Cytosol"}), 0))
    assert abs((rows.min() + rows.max()) / 2 - 49.5) <= 2
    assert abs((cols.min() + cols.max()) / 2 - 49.5) <= 2


def test_overlay_writes_short_class_names():
    import cv2

    from hpa_kit.labels import SHORT_NAMES

    labels = np.zeros((80, 160), np.int32)
    labels[10:70, 20:140] = 1
    image = np.zeros(labels.shape + (4,), np.uint8)
    probs = {1: np.eye(19)[16] * 0.9}
    out = overlay(image, labels, probs=probs, top_k=1)
    expected = annotate_cells(
        draw_outlines(np.zeros(labels.shape + (3,), np.uint8), labels),
        labels,
        {1: f"1\n{SHORT_NAMES[16]} 0.90"},
    )
    assert SHORT_NAMES[16] == "Cytosol" and np.array_equal(out, expected)
    assert cv2.getTextSize("Cytosol 0.90", cv2.FONT_HERSHEY_SIMPLEX, 0.35, 1)[0][0] < 160


def test_side_by_side_gap_and_titles():
    a = np.zeros((30, 50, 3), np.uint8)
    b = np.full((30, 40, 3), 7, np.uint8)
    row = side_by_side([a, b], gap=3)
    assert row.shape == (30, 93, 3)
    assert np.all(row[:, 50:53] == 255) and np.all(row[:, 53:] == 7) and not row[:, :50].any()
    titled = side_by_side([a, b], titles=["left", "right"], gap=3)
    strip = titled.shape[0] - 30
    assert titled.shape[1] == 93 and strip > 8
    assert np.array_equal(titled[strip:], row)
    # each title is written above its own panel
    text = np.any(titled[:strip] > 32, axis=2)
    assert text[:, :50].any() and text[:, 53:].any()
    for bad in ([a, b[:20]], []):
        with pytest.raises(ValueError, match="one height"):
            side_by_side(bad)
    with pytest.raises(ValueError, match="one title per panel"):
        side_by_side([a, b], titles=["only one"])


def test_prediction_vs_truth_panels():
    from hpa_kit.labels import SHORT_NAMES
    from hpa_kit.rle import encode_label_image
    from hpa_kit.submission import format_prediction_string

    labels = np.zeros((120, 200), np.int32)
    labels[10:110, 10:90] = 1
    labels[10:110, 110:190] = 2
    masks = encode_label_image(labels)
    prediction = format_prediction_string([(0, 0.5, masks[1]), (16, 0.75, masks[2])])
    truth = format_prediction_string([(0, 1.0, masks[1]), (14, 1.0, masks[2]), (16, 1, masks[2])])
    image = np.zeros(labels.shape + (4,), np.uint8)
    picture = prediction_vs_truth(image, prediction, truth)
    left = overlay(image, labels, probs={1: np.eye(19)[0] * 0.5, 2: np.eye(19)[16] * 0.75})
    right = annotate_cells(
        draw_outlines(composite(image), labels),
        labels,
        {1: SHORT_NAMES[0], 2: f"{SHORT_NAMES[14]}\n{SHORT_NAMES[16]}"},
    )
    assert np.array_equal(picture, side_by_side([left, right], titles=COMPARISON_TITLES))

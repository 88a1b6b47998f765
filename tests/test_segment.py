"""hpa_kit.segment: scale-aware constants, label_cells, upsampling, matching."""

from __future__ import annotations

import dataclasses
import pickle

import cv2
import numpy as np
import pytest
from scipy import ndimage as ndi
from segment_scenes import FG, blob, rect, scene_maps
from skimage import filters, measure, morphology, segmentation

from hpa_kit.segment import (
    ClassicalSegmenter,
    SegConfig,
    _label,
    label_cells,
    maps_to_labels,
    match_dataset,
    match_labels,
    reduced_shape,
    scaled_area,
    scaled_cut,
    scaled_radius,
    segment,
    upsample_labels,
)
from hpa_kit.segment._reference import reference_label_cell

FULL, QUARTER = SegConfig(scale=1.0), SegConfig(scale=0.25)


# --- helpers -------------------------------------------------------------------------------


# --- constants -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("area", "scale", "expected"),
    [
        (500, 1.0, 500),
        (500, 0.5, 125),
        (500, 0.25, 32),  # 31.25 up
        (1000, 0.25, 63),  # 62.5 up
        (8, 0.25, 1),  # 0.5 up
        (2500, 0.25, 157),  # 156.25 up
        (5500, 0.25, 344),  # 343.75 up
        (500, 0.3, 45),  # 500 * 0.09 = 45.00000000000001 in floats: not 46
        (5500, 0.125, 86),  # 85.9375 up
        (0, 0.25, 0),
    ],
)
def test_scaled_area_rounds_up(area, scale, expected):
    assert scaled_area(area, scale) == expected


def test_scaled_cut_rounds_to_nearest():
    assert [scaled_cut(1, s) for s in (1.0, 0.75, 0.5, 0.49, 0.25)] == [1, 1, 1, 0, 0]
    assert scaled_cut(0, 1.0) == 0
    with pytest.raises(ValueError):
        scaled_cut(2, 1.0)
    with pytest.raises(ValueError, match="rim_cut"):
        SegConfig(rim_cut=2)
    assert QUARTER.sizes().rim_cut == 0 and FULL.sizes().rim_cut == 1


@pytest.mark.parametrize(
    ("scale", "expected"), [(1.0, 6), (0.5, 3), (0.25, 2), (0.2, 2), (0.125, 1), (0.05, 1)]
)
def test_scaled_radius_rounds_up_and_stays_positive(scale, expected):
    assert scaled_radius(6, scale) == expected
    assert scaled_radius(0, scale) == 0


def test_ceil_is_the_strict_threshold_at_scale():
    """n < N s^2 (real) holds exactly when n < scaled_area(N, s), for every integer n."""
    for area in (8, 500, 1000, 2500, 5500):
        for scale in (0.125, 0.2, 0.25, 0.3, 0.5, 0.75):
            threshold = scaled_area(area, scale)
            exact = area * scale * scale
            assert threshold - 1 < exact + 1e-9 and threshold >= exact - 1e-9


def test_segconfig_sizes_and_validation():
    assert FULL.sizes() == _label.SegConfig(scale=1.0).sizes()
    sizes = FULL.sizes()
    assert (sizes.min_seed_area, sizes.max_hole_area, sizes.min_mask_area) == (500, 1000, 8)
    assert (sizes.min_nucleus_area, sizes.min_cell_area, sizes.closing_radius) == (2500, 5500, 6)
    assert QUARTER.sizes().min_cell_area == 344
    assert FULL.sizes(0.25) == QUARTER.sizes()
    assert FULL.at_scale(0.25) == QUARTER
    with pytest.raises(dataclasses.FrozenInstanceError):
        FULL.scale = 0.5  # type: ignore[misc]
    with pytest.raises(ValueError, match="scale"):
        SegConfig(scale=0)
    with pytest.raises(ValueError, match="min_cell_area"):
        SegConfig(min_cell_area=-1)
    assert pickle.loads(pickle.dumps(QUARTER)) == QUARTER


def test_exact_floods_resolves_by_effective_scale():
    assert FULL.sizes().exact_floods is True and QUARTER.sizes().exact_floods is False
    assert SegConfig(scale=0.5).sizes().exact_floods is True
    assert SegConfig(scale=1.0, pixel_size=2.5).sizes().exact_floods is False  # s = 0.4
    assert SegConfig(scale=1.0, exact_floods=False).sizes().exact_floods is False
    assert SegConfig(scale=0.25, exact_floods=True).sizes().exact_floods is True
    with pytest.raises(ValueError, match="exact_floods"):
        SegConfig(exact_floods=1)  # type: ignore[arg-type]


def test_reduced_shape():
    assert reduced_shape((2048, 2048), 0.25) == (512, 512)
    assert reduced_shape((1728, 1728), 0.25) == (432, 432)
    assert reduced_shape((3072, 3072), 0.25) == (768, 768)
    assert reduced_shape((1730, 2050), 0.25) == (433, 513)  # 432.5 and 512.5 round up
    assert reduced_shape((3, 2), 0.1) == (1, 1)


# --- private building blocks, literal arrays ------------------------------------------------


def test_remove_small_components_is_strict():
    mask = np.zeros((6, 9), bool)
    mask[0, 0:3] = True  # 3 px
    mask[3:5, 5:7] = True  # 4 px
    mask[5, 0] = mask[4, 1] = True  # two 1 px objects (diagonal: not 4-connected)
    out = _label._remove_small_components(mask, 3)
    assert out.sum() == 7 and out[0, 0] and out[3, 5] and not out[5, 0]
    assert _label._remove_small_components(mask, 4).sum() == 4


def test_remove_small_labels_counts_whole_labels():
    labels = np.array([[1, 1, 0, 2], [0, 0, 0, 2], [3, 0, 0, 2]], np.int32)
    out = _label._remove_small_labels(labels, 3)
    np.testing.assert_array_equal(out, [[0, 0, 0, 2], [0, 0, 0, 2], [0, 0, 0, 2]])
    assert (
        _label._remove_small_labels(labels, 2).max() == 2
        and (_label._remove_small_labels(labels, 2) == 1).sum() == 2
    )


def test_fill_small_holes_is_strict_and_counts_edge_background():
    mask = np.ones((7, 7), bool)
    mask[2:4, 2:4] = False  # 4 px hole
    mask[0, 6] = False  # 1 px background at the edge: a "hole" too, as in skimage < 0.26
    out = _label._fill_small_holes(mask, 4)
    assert not out[2, 2] and out[0, 6]
    assert _label._fill_small_holes(mask, 5).all()


def test_fill_holes_matches_scipy():
    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = rng.random((30, 41)) < rng.uniform(0.3, 0.8)
        expected = ndi.binary_fill_holes(mask, structure=ndi.generate_binary_structure(2, 1))
        np.testing.assert_array_equal(_label._fill_holes(mask), expected)


def test_interior_without_background_cut():
    labels = np.array(
        [[1, 1, 0, 0],
         [1, 1, 0, 2],
         [0, 0, 2, 2],
         [3, 3, 2, 2]], np.int32)  # fmt: skip
    expected = np.array(
        [
            [1, 1, 0, 0],
            [1, 0, 0, 1],  # (1, 1) touches 2 diagonally at (2, 2); background never cuts
            [0, 0, 0, 1],  # (2, 2) touches 1 diagonally
            [1, 0, 0, 1],
        ],
        bool,
    )  # fmt: skip  (3, 1) and (3, 2) touch each other
    np.testing.assert_array_equal(_label._interior(labels, cut_background=False), expected)


@pytest.mark.parametrize("connectivity", [4, 8])
def test_components_are_ndi_label_with_its_numbering_and_counts(connectivity):
    """OpenCV's labelling must number components as ndi.label does (raster order of their first
    pixel), serial or threaded (the large masks), and its areas must be the bincount."""
    rng = np.random.default_rng(connectivity)
    structure = ndi.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    masks = [np.zeros((0, 5), bool), np.zeros((4, 6), bool), np.ones((3, 7), bool),
             rng.random((1, 50)) < 0.5, rng.random((50, 1)) < 0.5]  # fmt: skip
    for _ in range(30):
        shape = tuple(int(v) for v in rng.integers(2, 160, 2))
        smooth = ndi.gaussian_filter(rng.random(shape), rng.uniform(0.3, 2))
        masks.append(smooth > rng.uniform(0.35, 0.6))
    masks.append(ndi.gaussian_filter(rng.random((700, 900)), 1.5) > 0.5)
    masks.append(masks[-1][::3, ::2])  # not contiguous
    for mask in masks:
        expected, count = ndi.label(mask, structure=structure, output=np.int32)
        labels, n = _label._components(mask, connectivity)
        assert labels.dtype == np.int32 and n == count
        np.testing.assert_array_equal(labels, expected)
        labels, areas = _label._components_and_areas(mask, connectivity)
        np.testing.assert_array_equal(labels, expected)
        np.testing.assert_array_equal(areas, np.bincount(expected.ravel(), minlength=1))


@pytest.mark.parametrize("cut_background", [True, False])
def test_interior_opencv_path_equals_shifted_comparisons(cut_background):
    """Labels past float32's exact range take the numpy path; both give one answer."""
    rng = np.random.default_rng(int(cut_background))
    for shape in [(1, 9), (9, 1), (2, 2), (37, 51), (120, 97)]:
        coarse = rng.integers(0, 6, (max(1, shape[0] // 5), max(1, shape[1] // 5)))
        labels = cv2.resize(coarse.astype(np.int32), shape[::-1], interpolation=cv2.INTER_NEAREST)
        labels[rng.random(shape) < 0.05] = 0
        expected = _label._interior(labels, cut_background=cut_background)
        huge = np.where(labels > 0, labels.astype(np.int64) + 2**24, 0)  # past float32: numpy
        np.testing.assert_array_equal(_label._interior(huge, cut_background=cut_background),
                                      expected)  # fmt: skip


def test_interior_matches_skimage_find_boundaries():
    rng = np.random.default_rng(0)
    labels = cv2.resize(
        rng.integers(0, 5, (6, 7)).astype(np.int32), (29, 23), interpolation=cv2.INTER_NEAREST
    )
    expected = (labels > 0) & ~segmentation.find_boundaries(labels, mode="thick")
    np.testing.assert_array_equal(_label._interior(labels), expected)


@pytest.mark.parametrize("radius", [1, 2, 6])
def test_grey_closing_matches_skimage(radius):
    rng = np.random.default_rng(radius)
    labels = cv2.resize(
        rng.integers(0, 40, (9, 8)).astype(np.int32), (61, 70), interpolation=cv2.INTER_NEAREST
    )
    labels[rng.random(labels.shape) < 0.05] = 0
    expected = morphology.closing(labels, morphology.disk(radius))
    np.testing.assert_array_equal(_label._grey_closing(labels, radius), expected)


def test_above_matches_float_comparison():
    values = np.arange(256, dtype=np.uint8)
    for threshold in (-0.1, 0.0, 0.05, 0.15, 0.22, 0.4, 102 / 255, 1.0):
        np.testing.assert_array_equal(_label._above(values, threshold), values / 255 > threshold)


def _random_channels():
    rng = np.random.default_rng(7)
    yield np.full((5, 6), 77, np.uint8)  # one value: skimage returns it
    yield np.array([[0, 255], [255, 255]], np.uint8)  # two values, the full range
    yield np.array([[100, 101, 101], [140, 100, 120]], np.uint8)  # narrow range, empty bins
    yield rng.integers(0, 256, (37, 53)).astype(np.uint8)
    yield rng.integers(30, 90, (64, 64)).astype(np.uint8)
    smooth = ndi.gaussian_filter(rng.random((96, 80)), 4)
    yield np.clip(255 * (smooth - smooth.min()) / np.ptp(smooth), 0, 255).astype(np.uint8)
    bimodal = np.where(rng.random((50, 70)) < 0.3, rng.normal(200, 20, (50, 70)), 5)
    yield np.clip(bimodal, 0, 255).astype(np.uint8)


def test_otsu_of_fraction_is_skimage_otsu_bit_for_bit():
    for channel in _random_channels():
        expected = filters.threshold_otsu(channel / 255.0)
        got = _label._otsu_of_fraction(channel)
        assert isinstance(got, float) and got == float(expected), (channel.min(), channel.max())
    assert _label._otsu_of_fraction(np.full((3, 3), 51, np.uint8)) == 51 / 255.0


def test_drop_small_components_is_relabelling_after_removal():
    components = np.array([[1, 1, 0, 2], [0, 0, 0, 0], [3, 3, 3, 0]], np.int32)
    np.testing.assert_array_equal(
        _label._drop_small_components(components, 2), [[1, 1, 0, 0], [0, 0, 0, 0], [2, 2, 2, 0]]
    )
    assert _label._drop_small_components(components, 1) is components  # nothing removed
    rng = np.random.default_rng(3)
    for i in range(30):
        mask = ndi.gaussian_filter(rng.random((47, 61)), rng.uniform(0.7, 2)) > 0.5
        for structure in (ndi.generate_binary_structure(2, 1), np.ones((3, 3), bool)):
            components, _ = ndi.label(mask, structure=structure, output=np.int32)
            min_area = int(rng.integers(1, 12))
            kept = _label._remove_small_labels(components, min_area) > 0
            expected, _ = ndi.label(kept, structure=structure, output=np.int32)
            np.testing.assert_array_equal(
                _label._drop_small_components(components, min_area), expected, err_msg=str(i)
            )


def test_relabel_of_a_mask_matches_measure_label():
    rng = np.random.default_rng(4)
    for _ in range(30):
        mask = ndi.gaussian_filter(rng.random((40, 57)), rng.uniform(0.5, 2)) > 0.5
        expected = measure.label(mask, background=0, connectivity=2)
        got = _label._relabel(mask)
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, expected)


# --- label_cells: each size threshold at its boundary ----------------------------------------


@pytest.mark.parametrize(("config", "n", "kept"), [(FULL, 500, True), (FULL, 499, False),
                                                   (QUARTER, 32, True), (QUARTER, 31, False)])  # fmt: skip
def test_seed_area_boundary(config, n, kept):
    k = 4 if config is FULL else 1  # geometry in quarter-scale units, x4 at full scale
    shape = (48 * k, 48 * k)
    cell = rect(shape, 4 * k, 4 * k, 40 * k, 40 * k)
    nucleus = rect(shape, 12 * k, 12 * k, 20 * k, 20 * k)
    seed = blob(shape, 16 * k, 14 * k, 6 * k, n)
    nuclei, cells = label_cells(*scene_maps(shape, nucleus=nucleus, cell=cell, seed=seed), config)
    assert cells.max() == (1 if kept else 0)
    if kept:  # the one seed grows over the whole nucleus mask
        assert (nuclei == 1).sum() == nucleus.sum()


@pytest.mark.parametrize(("config", "n", "filled"), [(FULL, 1000, False), (FULL, 999, True),
                                                     (QUARTER, 63, False), (QUARTER, 62, True)])  # fmt: skip
def test_hole_area_boundary(config, n, filled):
    k = 4 if config is FULL else 1
    shape = (48 * k, 48 * k)
    cell = rect(shape, 4 * k, 4 * k, 40 * k, 40 * k)
    nucleus = rect(shape, 10 * k, 10 * k, 26 * k, 26 * k)
    hole = blob(shape, 16 * k, 16 * k, 10 * k, n)
    nucleus &= ~hole
    nuclei, cells = label_cells(*scene_maps(shape, nucleus=nucleus, cell=cell), config)
    assert cells.max() == 1
    assert (nuclei == 1).sum() == nucleus.sum() + (n if filled else 0)


@pytest.mark.parametrize(("n", "kept"), [(8, True), (7, False)])
def test_mask_speck_boundary(n, kept):
    """A nucleus-mask speck under 8 px is removed before the watershed (seen with the nucleus
    size filter switched off: the speck is then the only nucleus)."""
    config = SegConfig(scale=1.0, min_nucleus_area=0)
    shape = (120, 120)
    maps = np.zeros((*shape, 3), np.uint8)
    maps[20:100, 20:100, 2] = 80  # 0.31: seed level, below the 0.4 mask level
    maps[..., 2][blob(shape, 50, 50, 4, n)] = FG
    cell_maps = np.zeros_like(maps)
    cell_maps[..., 2][rect(shape, 10, 10, 100, 100)] = FG
    nuclei, cells = label_cells(maps, cell_maps, config)
    assert cells.max() == (1 if kept else 0)
    assert (nuclei > 0).sum() == (n if kept else 0)


@pytest.mark.parametrize(("config", "n", "kept"), [(FULL, 2500, True), (FULL, 2499, False),
                                                   (QUARTER, 157, True), (QUARTER, 156, False)])  # fmt: skip
def test_nucleus_area_boundary(config, n, kept):
    k = 4 if config is FULL else 1
    shape = (48 * k, 48 * k)
    cell = rect(shape, 4 * k, 4 * k, 40 * k, 40 * k)
    nucleus = blob(shape, 12 * k, 12 * k, 13 * k, n)
    nuclei, cells = label_cells(*scene_maps(shape, nucleus=nucleus, cell=cell), config)
    assert cells.max() == (1 if kept else 0)
    assert (nuclei == 1).sum() == (n if kept else 0)


# At full scale a lone rectangular cell loses a one-pixel rim to each of the two hole-filling
# steps, so a region of (h + 4) x (w + 4) ends as an h x w cell; at 0.25 there is no such cut.
@pytest.mark.parametrize(
    ("config", "final", "kept"),
    [(FULL, (55, 100), True), (FULL, (47, 117), False),  # 5500 and 5499 px
     (QUARTER, (8, 43), True), (QUARTER, (7, 49), False)],  # 344 and 343 px
)  # fmt: skip
def test_cell_area_boundary(config, final, kept):
    height, width = final
    rim = 2 if config is FULL else 0
    shape = (height + 20, width + 20)
    cell = rect(shape, 10 - rim, 10 - rim, height + 2 * rim, width + 2 * rim)
    nucleus = rect(shape, 11, 20, 40, 70) if config is FULL else rect(shape, 11, 12, 5, 32)
    nuclei, cells = label_cells(*scene_maps(shape, nucleus=nucleus, cell=cell), config)
    if kept:
        assert cells.max() == 1
        np.testing.assert_array_equal(cells == 1, rect(shape, 10, 10, height, width))
        assert (nuclei == 1).sum() == nucleus.sum()
    else:
        assert cells.max() == 0 and nuclei.max() == 0


# --- label_cells: synthetic scenes with known outcomes --------------------------------------


def _disk(shape, center, radius):
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - center[0]) ** 2 + (cols - center[1]) ** 2 <= radius**2


def test_separate_disks_give_one_cell_per_nucleus():
    shape = (128, 192)
    centers = [(40, 40), (40, 150), (95, 95)]
    nucleus = np.zeros(shape, bool)
    cell = np.zeros(shape, bool)
    for center in centers:
        nucleus |= _disk(shape, center, 9)
        cell |= _disk(shape, center, 22)
    nuclei, cells = label_cells(*scene_maps(shape, nucleus=nucleus, cell=cell), QUARTER)
    assert cells.dtype == np.int32 and nuclei.dtype == np.int32
    assert cells.max() == 3
    for center in centers:  # raster order of first pixel = order of the centres here
        cell_id = cells[center]
        assert cell_id > 0 and nuclei[center] == cell_id
        # the drawn disk exactly (at 0.25 no rim is cut: see test_cell_area_boundary)
        np.testing.assert_array_equal(cells == cell_id, _disk(shape, center, 22))
    assert set(np.unique(nuclei[cells == 0])) == {0}


def test_touching_cells_split_at_the_border_line():
    """Two nuclei in one cell region with a border line (foreground gap + cell border channel)
    between them: two cells that meet at the line, each around its own nucleus."""
    shape = (40, 80)
    nucleus = rect(shape, 12, 10, 14, 14) | rect(shape, 12, 54, 14, 14)
    cell = rect(shape, 5, 5, 30, 70)
    nuclei_maps, cell_maps = scene_maps(shape, nucleus=nucleus, cell=cell)
    cell_maps[5:35, 44:46, 2] = 0  # gap in the foreground ...
    cell_maps[5:35, 44:46, 1] = 128  # ... which the border channel marks
    nuclei, cells = label_cells(nuclei_maps, cell_maps, QUARTER)
    assert cells.max() == 2
    left, right = cells[18, 15], cells[18, 60]
    assert {left, right} == {1, 2}
    left_cols = np.nonzero((cells == left).any(axis=0))[0]
    right_cols = np.nonzero((cells == right).any(axis=0))[0]
    # they meet at the line (cols 44-45); the last hole filling cuts both sides of the contact
    assert 43 <= left_cols.max() <= 47 and 43 <= right_cols.min() <= 48
    touching = ndi.binary_dilation(cells == left, structure=np.ones((3, 3), bool)) & (
        cells == right
    )
    assert not touching.any()
    assert (nuclei == left).sum() == (nuclei == right).sum() == 14 * 14


def test_without_border_line_touching_cells_split_between_nuclei():
    shape = (40, 80)
    nucleus = rect(shape, 12, 10, 14, 14) | rect(shape, 12, 54, 14, 14)
    cell = rect(shape, 5, 5, 30, 70)
    nuclei, cells = label_cells(*scene_maps(shape, nucleus=nucleus, cell=cell), QUARTER)
    assert cells.max() == 2
    assert cells[18, 15] != cells[18, 60]
    left, right = (cells == cells[18, 15]).sum(), (cells == cells[18, 60]).sum()
    assert 0.4 < left / (left + right) < 0.6


@pytest.mark.parametrize(("wrap", "expected_cells"), [(True, 1), (False, 2)])
def test_border_sum_wrap(wrap, expected_cells):
    """Border channels 200 + 100 wrap to 44 in uint8 (not a border: the two nuclei share one
    seed, as in hpacellseg); added without overflow they make a border that splits them."""
    shape = (40, 80)
    nucleus = rect(shape, 12, 10, 14, 26) | rect(shape, 12, 44, 14, 26)
    cell = rect(shape, 5, 5, 30, 70)
    nuclei_maps, cell_maps = scene_maps(shape, nucleus=nucleus, cell=cell)
    nuclei_maps[12:26, 36:44, 2] = FG  # a bridge joining the two nuclei
    nuclei_maps[12:26, 38:42, 1] = 200
    cell_maps[12:26, 38:42, 1] = 100
    config = dataclasses.replace(QUARTER, wrap_border_sum=wrap)
    _, cells = label_cells(nuclei_maps, cell_maps, config)
    assert cells.max() == expected_cells


def test_more_than_255_cells_keep_distinct_ids():
    """hpacellseg casts cell labels to uint8 and wraps past 255; we keep int32 ids."""
    grid, period = 18, 30  # gaps of 6 px: wider than the closing (disk 2) bridges
    shape = (grid * period, grid * period)
    nucleus = np.zeros(shape, bool)
    cell = np.zeros(shape, bool)
    for i in range(grid):
        for j in range(grid):
            cell[i * period + 3 : i * period + 27, j * period + 3 : j * period + 27] = True
            nucleus[i * period + 8 : i * period + 22, j * period + 8 : j * period + 22] = True
    nuclei, cells = label_cells(*scene_maps(shape, nucleus=nucleus, cell=cell), QUARTER)
    assert cells.max() == grid * grid == 324
    np.testing.assert_array_equal(np.unique(cells), np.arange(325))
    np.testing.assert_array_equal(np.bincount(cells.ravel())[1:], np.full(324, 24 * 24))
    np.testing.assert_array_equal(np.bincount(nuclei.ravel())[1:], np.full(324, 14 * 14))
    assert (cells[nuclei > 0] == nuclei[nuclei > 0]).all()


def test_empty_and_bad_maps():
    empty = np.zeros((32, 32, 3), np.uint8)
    nuclei, cells = label_cells(empty, empty, QUARTER)
    assert nuclei.max() == cells.max() == 0 and cells.shape == (32, 32)
    with pytest.raises(ValueError, match="uint8"):
        label_cells(empty.astype(np.float32), empty, QUARTER)
    with pytest.raises(ValueError, match="HxWx3"):
        label_cells(empty[..., :2], empty, QUARTER)
    with pytest.raises(ValueError, match="differ in shape"):
        label_cells(empty, empty[:16], QUARTER)


# --- parity with a direct scikit-image rendering of hpacellseg's label_cell ------------------


def _random_scene(seed, shape=(360, 360)):
    """Noisy maps of a 3 x 3 jittered grid of cells: nuclei of ~3000-4000 px, cells that touch
    their neighbours, a border channel along the lines where neighbouring cells meet, some
    touching nuclei and noise everywhere (so every threshold cuts irregular shapes)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    centers = [(60 + 120 * i + rng.integers(-20, 21), 60 + 120 * j + rng.integers(-20, 21))
               for i in range(3) for j in range(3)]  # fmt: skip
    distances = np.stack([np.hypot(rows - r, cols - c) for r, c in centers])
    nearest = np.sort(distances, axis=0)
    nuclei_radius = rng.uniform(30, 38, len(centers))[:, None, None]
    nuc_fg = (distances < nuclei_radius).any(axis=0).astype(float)
    cell_fg = (nearest[0] < rng.uniform(62, 80)).astype(float)
    border = np.clip(1 - (nearest[1] - nearest[0]) / 8, 0, 1) * cell_fg

    def noisy(field, sigma, amount):
        noise = filters.gaussian(rng.standard_normal(shape), sigma=sigma)
        noise /= noise.std()
        return np.clip((filters.gaussian(field, sigma=2) + amount * noise) * 255, 0, 255).astype(
            np.uint8
        )

    nuc = np.zeros((*shape, 3), np.uint8)
    cell = np.zeros((*shape, 3), np.uint8)
    nuc[..., 2] = noisy(nuc_fg, 3, 0.15)
    nuc[..., 1] = noisy(border * 0.6, 3, 0.1)
    cell[..., 2] = noisy(cell_fg * (1 - 0.7 * border), 4, 0.2)
    cell[..., 1] = noisy(border * 0.8, 3, 0.1)
    return nuc, cell


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_label_cells_matches_skimage_reference_at_full_scale(seed):
    nuc, cell = _random_scene(seed)
    expected_nuclei, expected_cells = reference_label_cell(nuc, cell)
    assert expected_cells.max() >= 5 and expected_nuclei.max() >= 5  # not a trivial scene
    nuclei, cells = label_cells(nuc, cell, FULL)
    np.testing.assert_array_equal(cells, expected_cells)
    np.testing.assert_array_equal(nuclei, expected_nuclei)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reduced_floods_differ_only_at_equal_priority_races(seed):
    """The reduced floods (the default below scale 0.5) give the same cells as the exact ones
    but for the few pixels that equal-valued seeds of two labels race for (uint8 maps have
    many ties): at 1.0 against hpacellseg's result, and at 0.25 between the two modes."""
    nuc, cell = _random_scene(seed)
    small = [cv2.resize(m, (90, 90), interpolation=cv2.INTER_AREA) for m in (nuc, cell)]
    for maps, exact, reduced in [
        ((nuc, cell), reference_label_cell(nuc, cell), dataclasses.replace(FULL, exact_floods=False)),
        (small, label_cells(*small, dataclasses.replace(QUARTER, exact_floods=True)), QUARTER),
    ]:  # fmt: skip
        got = label_cells(*maps, reduced)
        for got_labels, exact_labels in zip(got, exact, strict=True):
            assert np.mean(got_labels != exact_labels) < 0.006
            match = match_labels(exact_labels, got_labels)
            assert match.tp == match.n_true == match.n_pred and match.mean_iou > 0.98


@pytest.mark.parametrize("seed", range(6))
def test_flood_reduced_equals_skimage_without_ties(seed):
    """With every relief value distinct no two seeds race at equal priority: the reduced flood
    must then be scikit-image's watershed exactly, whatever the seeds and the mask."""
    rng = np.random.default_rng(seed)
    shape = (70, 90)
    relief = rng.permutation(shape[0] * shape[1]).reshape(shape).astype(np.int32)
    relief = cv2.GaussianBlur(relief.astype(np.float32), (0, 0), 3) * 1000 + relief  # ridges
    mask = filters.gaussian(rng.random(shape), sigma=3) > 0.47
    markers = np.zeros(shape, np.int32)
    markers[rng.integers(0, shape[0], 25), rng.integers(0, shape[1], 25)] = np.arange(1, 26)
    markers = morphology.dilation(markers, morphology.disk(seed % 3))
    expected = segmentation.watershed(relief, markers, mask=mask)
    assert (mask & (markers == 0) & (expected > 0)).any()  # something was flooded
    got = _label._flood(relief, markers, mask, exact=False)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(_label._flood(relief, markers, mask, exact=True), expected)


@pytest.mark.parametrize("seed", range(4))
def test_reduced_flood_with_lines_on_a_flat_relief(seed):
    """hpacellseg's nuclei watershed: the mask as a flat relief, with watershed lines. With one
    label nothing races, so the reduced flood is scikit-image's exactly; with several, pixels
    may differ only where two fronts meet (within two pixels of a line or another label), and
    few do."""
    rng = np.random.default_rng(seed)
    shape = (90, 110)
    mask = np.zeros(shape, bool)
    cores = np.zeros(shape, bool)
    for r, c in rng.integers(10, 80, (9, 2)):
        radius = int(rng.integers(7, 13))
        mask |= ndi.distance_transform_edt(~_point(shape, r, c)) < radius
        cores |= ndi.distance_transform_edt(~_point(shape, r, c)) < radius - 5
    markers, _ = ndi.label(cores & (rng.random(shape) > 0.02), output=np.int32)
    relief = mask.view(np.uint8)
    for seeds in (markers, (markers > 0).astype(np.int32)):
        expected = segmentation.watershed(relief, seeds, mask=mask, watershed_line=True)
        got = _label._flood(relief, seeds, mask, exact=False, lines=True)
        exact = _label._flood(relief, seeds, mask, exact=True, lines=True)
        np.testing.assert_array_equal(exact, expected)
        if seeds.max() == 1:
            np.testing.assert_array_equal(got, expected)
            continue
        differ = got != expected
        assert differ.sum() <= 0.02 * mask.sum() and not (differ & (seeds > 0)).any()
        high = ndi.maximum_filter(np.where(mask, expected, -1), size=5)
        low = ndi.minimum_filter(np.where(mask, expected, 2**30), size=5)
        assert (high != low)[differ].all()  # a line or another label within two pixels


def _point(shape, r, c):
    out = np.zeros(shape, bool)
    out[r, c] = True
    return out


def test_reduced_flood_settles_single_label_components_without_the_heap(monkeypatch):
    shape = (40, 60)
    relief = np.random.default_rng(5).permutation(shape[0] * shape[1]).reshape(shape)
    mask = np.zeros(shape, bool)
    mask[2:18, 2:28] = True  # seeds of one label (two of them): all of it gets that label
    mask[22:38, 2:28] = True  # two labels: flooded by the heap
    mask[2:38, 34:58] = True  # no seed: stays 0
    markers = np.zeros(shape, np.int32)
    markers[5, 5] = markers[14, 24] = 3
    markers[25, 5], markers[35, 24] = 1, 2
    for lines in (False, True):
        expected = segmentation.watershed(relief, markers, mask=mask, watershed_line=lines)
        got = _label._flood(relief, markers, mask, exact=False, lines=lines)
        np.testing.assert_array_equal(got, expected)
    boxes = []
    watershed = segmentation.watershed
    monkeypatch.setattr(
        segmentation,
        "watershed",
        lambda image, *a, **k: boxes.append(image.shape) or watershed(image, *a, **k),
    )
    _label._flood(relief, markers, mask, exact=False)
    assert boxes == [(18, 28)]  # the two-label component's box (16 x 26) grown by one pixel


def test_flood_with_nothing_to_flood_returns_the_masked_seeds():
    markers = np.array([[1, 1, 0], [2, 2, 0]], np.int32)
    mask = np.array([[True, False, False], [True, True, False]])
    expected = segmentation.watershed(np.zeros((2, 3)), markers, mask=mask)
    np.testing.assert_array_equal(_label._flood(np.zeros((2, 3)), markers, mask, exact=False),
                                  expected)  # fmt: skip


# --- upsampling and maps_to_labels ------------------------------------------------------------


@pytest.mark.parametrize(
    ("small", "full"),
    [((432, 432), (1728, 1728)), ((768, 768), (3072, 3072)), ((433, 513), (1730, 2050)),
     ((9, 5), (31, 17)), ((10, 10), (4, 6))],
)  # fmt: skip
def test_upsample_labels_exact_size_and_nearest(small, full):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 70000, small).astype(np.int32)  # ids past 16 bits survive
    out = upsample_labels(labels, full)
    assert out.shape == full and out.dtype == np.int32
    # source pixel floor((i + 0.5) * n_src / n_out), by hand, on each axis
    rows = np.floor((np.arange(full[0]) + 0.5) * small[0] / full[0]).astype(int)
    cols = np.floor((np.arange(full[1]) + 0.5) * small[1] / full[1]).astype(int)
    np.testing.assert_array_equal(out, labels[np.ix_(rows, cols)])
    # int64 takes the index-arithmetic path: same pixels
    np.testing.assert_array_equal(upsample_labels(labels.astype(np.int64), full), out)


def test_upsample_integer_factor_makes_blocks():
    labels = np.arange(6, dtype=np.int32).reshape(2, 3)
    out = upsample_labels(labels, (8, 12))
    np.testing.assert_array_equal(out, np.kron(labels, np.ones((4, 4), np.int32)))


def test_maps_to_labels_checks_shape():
    maps = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match="expected \\(16, 16\\)|do not match"):
        maps_to_labels(maps, maps, shape=(100, 64), config=QUARTER)
    nuclei, cells = maps_to_labels(maps, maps, shape=(63, 65), config=QUARTER)
    assert cells.shape == nuclei.shape == (63, 65)


def test_segment_gives_full_size_labels_for_any_shape():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 30, (h, w, 4), dtype=np.uint8) for h, w in [(64, 96), (70, 50)]]
    disk = _disk((64, 96), (32, 48), 20)
    images[0][..., 0][_disk((64, 96), (32, 48), 28)] = 120
    images[0][..., 2][disk] = 220
    config = SegConfig(scale=0.5, min_seed_area=8, max_hole_area=16, min_nucleus_area=40,
                       min_cell_area=90, closing_radius=2)  # fmt: skip
    results = segment(images, segmenter=ClassicalSegmenter(scale=0.5, config=config), batch_size=1)
    assert [r[1].shape for r in results] == [(64, 96), (70, 50)]
    nuclei, cells = results[0]
    assert cells.max() == 1 and cells[32, 48] == 1 and nuclei[32, 48] == 1


def test_segmenter_config_must_match_scale():
    with pytest.raises(ValueError, match="scale"):
        ClassicalSegmenter(scale=0.5, config=QUARTER)
    segmenter = ClassicalSegmenter()
    assert segmenter.config == QUARTER
    assert pickle.loads(pickle.dumps(segmenter)).config == QUARTER


# --- matching ---------------------------------------------------------------------------------


def test_match_labels_hand_computed():
    truth = np.zeros((10, 10), np.int32)
    pred = np.zeros((10, 10), np.int32)
    truth[0:4, 0:4] = 1  # 16 px
    pred[0:4, 1:5] = 3  # overlaps 12: IoU 12 / 20 = 0.6
    truth[6:8, 6:8] = 2  # 4 px, pred covers 2 of them + 2 outside: IoU 2 / 6
    pred[7:9, 6:8] = 4
    pred[9, 0] = 9  # a lone false positive
    m = match_labels(truth, pred)
    assert (m.n_true, m.n_pred, m.tp) == (2, 3, 1)
    assert m.precision == pytest.approx(1 / 3) and m.recall == pytest.approx(0.5)
    assert m.f1 == pytest.approx(2 / 5) and m.mean_iou == pytest.approx(0.6)
    assert match_labels(truth, pred, threshold=0.3).tp == 2
    assert match_labels(truth, truth).f1 == 1.0
    assert match_labels(truth * 70001, pred) == m  # ids past 16 bits
    with pytest.raises(ValueError):
        match_labels(truth, pred[:5])


def test_match_dataset_pools_counts_not_per_image_scores():
    # image A: 4 true cells of 2x2, all found exactly (F1 1.0)
    a = np.zeros((6, 12), np.int32)
    for k in range(4):
        a[1:3, 3 * k : 3 * k + 2] = k + 1
    # image B: 1 true 4x4 cell, found shifted by one column (IoU 12 / 20 = 0.6), plus a false
    # positive (F1 2 / 3)
    b_true = np.zeros((6, 12), np.int32)
    b_pred = np.zeros((6, 12), np.int32)
    b_true[0:4, 0:4] = 1
    b_pred[0:4, 1:5] = 2
    b_pred[5, 10:12] = 3

    def pairs():  # a generator: pairs are consumed one at a time
        yield a, a * 3
        yield b_true, b_pred

    m = match_dataset(pairs(), threshold=0.6)
    assert (m.n_images, m.n_true, m.n_pred, m.tp) == (2, 5, 6, 5)
    # pooled: 2 * 5 / (5 + 6), not the mean of the per-image F1s (1 + 2/3) / 2
    assert m.f1 == pytest.approx(10 / 11) and m.precision == pytest.approx(5 / 6)
    assert m.recall == 1.0 and m.mean_iou == pytest.approx((4 * 1.0 + 0.6) / 5)
    assert match_dataset([(b_true, b_pred)], threshold=0.7).tp == 0  # 0.6 < 0.7
    empty = match_dataset([])
    assert (empty.n_images, empty.f1, empty.mean_iou) == (0, 0.0, 0.0)
    # one pair pooled is that pair's own matching (match_labels counts one image)
    assert match_dataset([(b_true, b_pred)]) == match_labels(b_true, b_pred)
    assert match_labels(b_true, b_pred).n_images == 1
    with pytest.raises(ValueError, match="threshold"):
        match_dataset([], threshold=0.0)
    with pytest.raises(ValueError, match="one shape"):
        match_dataset([(a, a), (b_true, b_pred[:5])])

"""From prediction maps to label images: hpacellseg's ``label_cell``, scale-aware.

numpy, scipy, scikit-image and OpenCV; no torch. Safe to run in worker processes.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage import filters, measure, segmentation
from skimage.morphology import disk

from hpa_kit._boundary import label_boundaries
from hpa_kit.segment._config import SegConfig, reduced_shape

__all__ = ["label_cells", "maps_to_labels", "upsample_labels"]

_CROSS = ndi.generate_binary_structure(2, 1)  # 4-connectivity
_SQUARE = ndi.generate_binary_structure(2, 2)  # 8-connectivity
_EXACT_FLOAT = 2**24  # label ids below this are exact in float32 (OpenCV morphology)


def _components(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
    """Connected components of a boolean mask (``connectivity`` 4 or 8) as int32, and their
    count: ``ndi.label``'s components and numbering (1..K in raster order of each component's
    first pixel; a test checks it on random masks), computed by OpenCV, which is faster.
    """
    if mask.size == 0 or mask.ndim != 2:
        structure = _CROSS if connectivity == 4 else _SQUARE
        labels, count = ndi.label(mask, structure=structure, output=np.int32)
        return labels, int(count)
    # SAUF scans pixel by pixel, so it numbers components in raster order; OpenCV's default
    # for 8-connectivity (BBDT / Spaghetti) scans 2 x 2 blocks and numbers them differently.
    count, labels = cv2.connectedComponentsWithAlgorithm(
        np.ascontiguousarray(mask, dtype=bool).view(np.uint8), connectivity, cv2.CV_32S,
        cv2.CCL_SAUF,
    )  # fmt: skip
    return labels, count - 1


def _components_and_areas(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_components` with the pixel count of every id instead of the count of ids
    (``areas[0]`` is the background's): what ``np.bincount`` of the labels gives, from the same
    OpenCV pass (cheaper than a separate count over the image)."""
    if mask.size == 0 or mask.ndim != 2:
        labels, _ = _components(mask, connectivity)
        return labels, np.bincount(labels.ravel(), minlength=1)
    _, labels, stats, _ = cv2.connectedComponentsWithStatsWithAlgorithm(
        np.ascontiguousarray(mask, dtype=bool).view(np.uint8), connectivity, cv2.CV_32S,
        cv2.CCL_SAUF,
    )  # fmt: skip
    return labels, stats[:, cv2.CC_STAT_AREA]


def _check_maps(maps: np.ndarray, name: str) -> None:
    if not isinstance(maps, np.ndarray) or maps.ndim != 3 or maps.shape[2] != 3:
        shape = getattr(maps, "shape", None)
        raise ValueError(f"{name} must be an HxWx3 uint8 array, got shape {shape}")
    if maps.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 (softmax x 255), got dtype {maps.dtype}")


def _above(channel: np.ndarray, threshold: float) -> np.ndarray:
    """``channel / 255 > threshold`` for a uint8 channel, without building a float image.

    The float expression hpacellseg evaluates is tabulated for the 256 values; it is monotonic,
    so it equals ``channel >= first value where it holds`` (a test checks the equality).
    """
    table = np.arange(256, dtype=np.float64) / 255.0 > threshold
    # the table is monotonic: True exactly from its first True entry on
    first = int(np.argmax(table)) if table.any() else 256
    return channel >= first


def _remove_small_components(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Drop 4-connected components of a boolean mask strictly smaller than ``min_area``."""
    if min_area <= 1:
        return mask.copy()
    labels, areas = _components_and_areas(mask, 4)
    keep = areas >= min_area
    keep[0] = False
    return keep.take(labels)


def _remove_small_labels(labels: np.ndarray, min_area: int) -> np.ndarray:
    """Set labels whose total area is strictly smaller than ``min_area`` to 0 (ids unchanged).

    Returns ``labels`` itself (not a copy) when no label is that small: callers must not
    modify the result in place.
    """
    if min_area <= 1:
        return labels
    sizes = np.bincount(labels.ravel())
    small = sizes < min_area
    small[0] = False
    if not small.any():
        return labels
    table = np.arange(sizes.size, dtype=labels.dtype)
    table[small] = 0
    return table.take(labels)  # one gather, faster than a boolean mask and a masked store


def _drop_small_components(
    components: np.ndarray, min_area: int, areas: np.ndarray | None = None
) -> np.ndarray:
    """Remove components strictly smaller than ``min_area`` from a connected-components
    labelling (numbered in raster order of first pixel) and renumber the rest 1..K.

    Kept components stay in the same order, so the result is what labelling the remaining
    pixels again with the same connectivity gives (a test checks it), without that pass.
    Returns ``components`` itself when nothing is removed. ``areas``: the pixel count of each
    id if known (:func:`_components_and_areas`), else counted here.
    """
    sizes = np.bincount(components.ravel()) if areas is None else areas
    keep = sizes >= min_area
    keep[0] = False
    if keep[1:].all():
        return components
    table = np.zeros(sizes.size, dtype=components.dtype)
    table[keep] = np.arange(1, int(keep.sum()) + 1, dtype=components.dtype)
    return table.take(components)


def _fill_small_holes(mask: np.ndarray, max_area: int) -> np.ndarray:
    """Fill 4-connected components of ``~mask`` strictly smaller than ``max_area``.

    Like scikit-image's ``remove_small_holes`` (before 0.26), a background component touching
    the image edge counts as a hole too.
    """
    if max_area <= 1:
        return mask.copy()
    labels, areas = _components_and_areas(~mask, 4)
    small = areas < max_area
    small[0] = False
    return mask | small.take(labels)


def _relabel(labels: np.ndarray) -> np.ndarray:
    """8-connected components of a label image (or mask), numbered in raster order, int32.

    A boolean mask goes through :func:`_components` (same components and numbering as
    ``measure.label``, a test checks it, and faster); a label image through ``measure.label``,
    which keeps differently labelled neighbours apart.
    """
    if labels.dtype == bool:
        return _components(labels, 8)[0]
    return measure.label(labels, background=0, connectivity=2).astype(np.int32, copy=False)


def _otsu_of_fraction(channel: np.ndarray) -> float:
    """``filters.threshold_otsu(channel / 255.0)`` of a uint8 channel, bit for bit, cheaper.

    scikit-image histograms a float image with ``np.histogram(values, bins=256)`` over the
    image's own range. The same bins are computed here for the (at most 256) distinct values
    weighted by their pixel counts, which gives the same counts and bin centres, and those
    go through scikit-image's own Otsu code: no float image, no 4-million-value histogram.
    (A test checks the equality on random and real-like channels.)
    """
    counts = np.bincount(channel.ravel(), minlength=256)
    present = np.flatnonzero(counts)
    values = present / 255.0
    if present.size == 1:  # scikit-image returns the single value itself
        return float(values[0])
    hist, edges = np.histogram(values, bins=256, weights=counts[present])
    centers = (edges[:-1] + edges[1:]) / 2.0
    return float(filters.threshold_otsu(hist=(hist, centers)))


def _interior(labels: np.ndarray, *, cut_background: bool = True) -> np.ndarray:
    """Labelled pixels whose neighbours all carry their own label.

    The complement of scikit-image's ``find_boundaries(labels, mode="thick")`` on labelled
    pixels (neighbours outside the image are treated as equal, as its reflect mode does): the
    four edge neighbours, background included. With ``cut_background=False`` a background
    neighbour does not count: only contacts between two different labels are cut, diagonal ones
    included (so that two cells never stay 8-connected across a background corner). The rule
    itself lives in :func:`hpa_kit._boundary.label_boundaries` (OpenCV min / max filters).

    >>> labels = np.array([[1, 1, 0, 0], [1, 1, 0, 2]])
    >>> _interior(labels).astype(int).tolist()
    [[1, 0, 0, 0], [1, 0, 0, 0]]
    >>> _interior(labels, cut_background=False).astype(int).tolist()
    [[1, 1, 0, 0], [1, 1, 0, 1]]
    """
    if cut_background:
        edge = label_boundaries(labels, connectivity=4, background=True)
    else:
        edge = label_boundaries(labels, connectivity=8, background=False)
    return edge ^ (labels > 0)  # the edge is made of labelled pixels only


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """``ndi.binary_fill_holes`` with 4-connected background, by labelling: background
    components that do not touch the image edge are holes. Same result, faster."""
    background, count = _components(~mask, 4)
    if count == 0:
        return mask.copy()
    outside = np.zeros(count + 1, bool)
    for edge in (background[0], background[-1], background[:, 0], background[:, -1]):
        outside[edge] = True
    outside[0] = True  # label 0 is the mask itself
    return mask | ~outside.take(background)


def _filled_interior(labels: np.ndarray, *, cut_background: bool = True) -> np.ndarray:
    """hpacellseg's per-label hole filling, before relabelling: cut every boundary between
    different labels (and the background) one pixel deep on both sides, fill the holes of what
    is left. Relabel the result 4-connected to get its label image."""
    return _fill_holes(_interior(labels, cut_background=cut_background))


def _grey_closing(labels: np.ndarray, radius: int) -> np.ndarray:
    """Grey closing of a label image with a disk (skimage ``disk``), reflect border.

    OpenCV on float32 (exact for ids below 2**24), scipy otherwise; both give scikit-image's
    ``closing(labels, disk(radius))``.
    """
    if radius <= 0 or labels.size == 0:
        return labels.copy()
    footprint = disk(radius).astype(np.uint8)
    if labels.max() < _EXACT_FLOAT:
        values = labels.astype(np.float32)
        values = cv2.dilate(values, footprint, borderType=cv2.BORDER_REFLECT)
        values = cv2.erode(values, footprint, borderType=cv2.BORDER_REFLECT)
        return values.astype(np.int32)
    return ndi.grey_closing(labels, footprint=footprint.astype(bool), mode="reflect")


def _flood(
    relief: np.ndarray,
    markers: np.ndarray,
    mask: np.ndarray,
    *,
    exact: bool,
    lines: bool = False,
) -> np.ndarray:
    """scikit-image's ``watershed(relief, markers, mask=mask, watershed_line=lines)`` as int32.

    ``exact=False`` gives the heap only what can change. A 4-connected mask component seeded
    by a single label is settled without it (every pixel gets that label; nothing races, no
    line), one without seeds stays 0. In the others, the heap gets the pixels left to flood and
    the labelled pixels 4-next to them (a labelled pixel with no such neighbour pushes nothing
    when popped), within their bounding box. Every pixel is then reached in the same priority order
    from the same seeds, except that the seeds (all pushed at the same priority) are popped in
    heap-position order, which depends on every seed pushed: where two seeds of different labels
    race for a pixel at equal priority the winner may differ (or, with ``lines``, where the line
    between them runs). Markers must not 4-touch a different label (connected components don't),
    so no seed turns into a line pixel in either call. (Tests check the equality on scenes
    without such races, and bound the differences on scenes with them.)
    """
    if exact:
        return segmentation.watershed(relief, markers, mask=mask, watershed_line=lines).astype(
            np.int32, copy=False
        )
    labels = np.where(mask, markers, 0).astype(np.int32, copy=False)
    todo = mask & (labels == 0)
    if not todo.any():  # nothing to flood: what scikit-image returns too
        return labels
    todo = _fill_single_label_components(labels, mask, todo)
    if not todo.any():
        return labels
    near = cv2.dilate(todo.view(np.uint8), _CROSS.view(np.uint8)).view(bool)
    seeds = np.where(near, labels, 0)
    rows, cols = np.flatnonzero(near.any(axis=1)), np.flatnonzero(near.any(axis=0))
    box = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    grown = segmentation.watershed(
        relief[box], seeds[box], mask=(todo | (seeds > 0))[box], watershed_line=lines
    )
    labels[box] = np.where(todo[box], grown, labels[box])
    return labels


def _fill_single_label_components(
    labels: np.ndarray, mask: np.ndarray, todo: np.ndarray
) -> np.ndarray:
    """Settle, in place in ``labels``, the pixels to flood (``todo``) that need no heap: those
    of a 4-connected mask component whose seeds all carry one label (the flood gives every
    pixel of it that label, and draws no line) or that has no seed (it stays 0). Returns the
    pixels left to flood: those of components seeded by two labels or more.
    """
    components, count = _components(mask, 4)
    seeded = labels > 0
    which, ids = components[seeded], labels[seeded]
    high = np.zeros(count + 1, np.int32)
    np.maximum.at(high, which, ids)
    low = np.full(count + 1, np.iinfo(np.int32).max, np.int32)
    np.minimum.at(low, which, ids)
    several = (high != low) & (high > 0)  # unseeded: high 0 (low stays at the maximum)
    if several[1:].all():
        return todo
    settled = todo & ~several.take(components)
    np.copyto(labels, np.where(several, 0, high).take(components), where=settled)
    return todo & ~settled


def label_cells(
    nuclei_maps: np.ndarray,
    cell_maps: np.ndarray,
    config: SegConfig = SegConfig(),  # noqa: B008 - frozen, immutable
) -> tuple[np.ndarray, np.ndarray]:
    """Nuclei and cell label images from the two networks' maps (hpacellseg ``label_cell``).

    Args:
        nuclei_maps, cell_maps: HxWx3 uint8 maps (softmax x 255; channel 1 = touching border,
            channel 2 = foreground) at ``config.scale`` of the image.
        config: thresholds; sizes are derived for ``config.scale`` (:meth:`SegConfig.sizes`).

    Returns:
        ``(nuclei_labels, cell_labels)``, HxW int32, 0 = background, cells numbered 1..N in
        raster order of their first pixel; each nucleus carries the id of its cell.

    Steps (see REFERENCE.md section 3): nucleus seeds (foreground > 0.15 away from borders, at
    least 500 px) grow by watershed, with lines, inside the nucleus mask (> 0.4, small holes
    filled, specks removed); nuclei under 2500 px are dropped. Cells grow from the nuclei by a
    watershed of the cell foreground inside ``foreground > max(0.22, otsu / 2)``; cells under
    5500 px are dropped, then grey closing (disk 6) and per-label hole filling; a second
    watershed may extend them into the cell-border channel; holes are filled again, cells are
    relabelled and those under 5500 px dropped. Nuclei are cut to their cells, re-checked
    against 2500 px and given their cell's id.

    Deliberate deviations from hpacellseg: labels are int32 throughout (hpacellseg casts the
    cell labels to uint8 after the first size filter, so the 256th cell wraps to 0 and later
    ones merge with earlier ids); size filters are "strictly smaller than N" on our own pixel
    counts, independent of the scikit-image version. The uint8 wrap of the border sum *is*
    reproduced unless ``config.wrap_border_sum`` is False. hpacellseg's attempt to keep cell
    border pixels out of the cell region and its clip of the distance have no effect there and
    are not reproduced (the effective behaviour is). At scale 1.0 the result is hpacellseg's
    (a test checks it pixel for pixel against a scikit-image rendering of label_cell).

    Scale: like hpacellseg, at full scale each of the two hole-filling steps cuts one pixel off
    every edge a cell shares with the background (the second one is not grown back), so a lone
    40 x 40 square comes out as 36 x 36. Below scale 0.5 that cut is dropped
    (``SegConfig.rim_cut``, :func:`scaled_cut`): at 0.25 one pixel is four full-resolution
    pixels; contacts between two cells are still cut (diagonal ones too). Below 0.5 the three
    watersheds also flood only the pixels left to flood (``SegConfig.exact_floods``,
    :func:`_flood`): faster, and identical but for equal-priority races:

    >>> maps = np.zeros((60, 60, 3), np.uint8)
    >>> maps[10:50, 10:50, 2] = 250  # one 40 x 40 object in both maps
    >>> nuclei, cells = label_cells(maps, maps, SegConfig(scale=1.0, min_seed_area=100,
    ...     min_nucleus_area=100, min_cell_area=100))
    >>> int(cells.max()), int((cells == 1).sum()), int((nuclei == 1).sum())
    (1, 1296, 1296)
    >>> nuclei, cells = label_cells(maps, maps, SegConfig(scale=0.25))
    >>> int(cells.max()), int((cells == 1).sum()), int((nuclei == 1).sum())
    (1, 1600, 1600)
    """
    _check_maps(nuclei_maps, "nuclei_maps")
    _check_maps(cell_maps, "cell_maps")
    if nuclei_maps.shape != cell_maps.shape:
        raise ValueError(
            f"nuclei_maps and cell_maps differ in shape: {nuclei_maps.shape} vs {cell_maps.shape}"
        )
    sizes = config.sizes()
    nuc_fg, cell_border, cell_fg = nuclei_maps[..., 2], cell_maps[..., 1], cell_maps[..., 2]

    # Nuclei: seeds away from both border channels, grown inside the nucleus mask.
    if config.wrap_border_sum:  # uint8 addition wraps modulo 256, as hpacellseg's does
        border_sum = nuclei_maps[..., 1] + cell_border
    else:
        border_sum = nuclei_maps[..., 1].astype(np.int16) + cell_border
    table = 1.0 - np.arange(511, dtype=np.float64) / 255.0 > config.border_threshold
    not_border = border_sum < (int(np.argmin(table)) if not table.all() else 511)  # monotonic
    seeds = _above(nuc_fg, config.seed_threshold) & not_border
    markers, areas = _components_and_areas(seeds, 4)
    markers = _drop_small_components(markers, sizes.min_seed_area, areas)
    mask = _above(nuc_fg, config.nuclei_threshold)
    mask = _fill_small_holes(mask, sizes.max_hole_area)
    mask = _remove_small_components(mask, sizes.min_mask_area)
    nuclei = _flood(mask.view(np.uint8), markers, mask, exact=sizes.exact_floods, lines=True)
    nuclei = _relabel(_remove_small_labels(nuclei, sizes.min_nucleus_area))

    # Cells: watershed of the cell foreground from the nuclei.
    level = _otsu_of_fraction(cell_fg) if cell_fg.size else 0.0
    region = _above(cell_fg, max(config.cell_threshold_floor, config.otsu_factor * level))
    relief = -cell_fg.astype(np.int16)
    cells = _flood(relief, nuclei, region, exact=sizes.exact_floods)
    cells = _remove_small_labels(cells, sizes.min_cell_area)
    cells = _grey_closing(cells, sizes.closing_radius)
    cut = sizes.rim_cut > 0
    cells, _ = _components(_filled_interior(cells, cut_background=cut), 4)
    grow = (cells > 0) | _above(cell_border, config.cell_border_threshold)
    cells = _flood(relief, cells, grow, exact=sizes.exact_floods)
    cells, areas = _components_and_areas(_filled_interior(cells, cut_background=cut), 8)
    cells = _drop_small_components(cells, sizes.min_cell_area, areas)  # 8-connected, raster order

    # Final nuclei: the nucleus pixels inside cells, given the id of their cell.
    inside, sizes_inside = _components_and_areas((cells > 0) & (nuclei > 0), 8)
    keep = sizes_inside >= sizes.min_nucleus_area
    keep[0] = False
    nuclei = np.where(keep.take(inside), cells, 0)
    return nuclei, cells


def upsample_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label image to ``shape`` (rows, cols), any sizes.

    Output pixel ``i`` takes source pixel ``floor((i + 0.5) * n_src / n_out)`` along each axis
    (pixel centres aligned), so an integer factor ``k`` turns each source pixel into a ``k x k``
    block. Any dtype and any label count work (OpenCV for int32 and other types it supports,
    index arithmetic otherwise).

    >>> upsample_labels(np.array([[1, 2], [3, 0]], np.int32), (4, 6))
    array([[1, 1, 1, 2, 2, 2],
           [1, 1, 1, 2, 2, 2],
           [3, 3, 3, 0, 0, 0],
           [3, 3, 3, 0, 0, 0]], dtype=int32)
    """
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D, got shape {labels.shape}")
    out_rows, out_cols = int(shape[0]), int(shape[1])
    if out_rows < 1 or out_cols < 1:
        raise ValueError(f"shape must be positive, got {shape}")
    in_rows, in_cols = labels.shape
    if (in_rows, in_cols) == (out_rows, out_cols):
        return labels.copy()
    if labels.dtype in (np.uint8, np.uint16, np.int16, np.int32, np.float32):
        # OpenCV's INTER_NEAREST_EXACT uses the same pixel-centre rule (a test checks it); it is
        # several times faster than fancy indexing. (Plain INTER_NEAREST floors i * n_src / n_out
        # instead: shifted by up to one pixel.)
        return cv2.resize(labels, (out_cols, out_rows), interpolation=cv2.INTER_NEAREST_EXACT)
    rows = ((np.arange(out_rows) * 2 + 1) * in_rows) // (2 * out_rows)
    cols = ((np.arange(out_cols) * 2 + 1) * in_cols) // (2 * out_cols)
    return labels[rows][:, cols]


def maps_to_labels(
    nuclei_maps: np.ndarray,
    cell_maps: np.ndarray,
    *,
    shape: tuple[int, int],
    config: SegConfig = SegConfig(),  # noqa: B008 - frozen, immutable
) -> tuple[np.ndarray, np.ndarray]:
    """Label maps made at ``config.scale`` and upsample the labels to the image ``shape``.

    The CPU half of segmentation: pure and picklable, meant for worker processes. The maps
    must have the size :func:`reduced_shape` gives for ``shape`` and ``config.scale``.

    >>> maps = np.zeros((32, 32, 3), np.uint8)
    >>> maps[4:28, 4:28, 2] = 250  # one 24 x 24 cell
    >>> nuclei, cells = maps_to_labels(maps, maps, shape=(128, 128), config=SegConfig(scale=0.25))
    >>> cells.shape, int(cells.max()), int((cells == 1).sum())
    ((128, 128), 1, 9216)
    """
    expected = reduced_shape(shape, config.scale)
    if nuclei_maps.shape[:2] != expected:
        raise ValueError(
            f"maps of shape {nuclei_maps.shape[:2]} do not match image shape {tuple(shape[:2])} "
            f"at scale {config.scale} (expected {expected})"
        )
    nuclei, cells = label_cells(nuclei_maps, cell_maps, config)
    return upsample_labels(nuclei, shape[:2]), upsample_labels(cells, shape[:2])

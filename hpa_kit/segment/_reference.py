"""hpacellseg's ``label_cell`` written directly with scikit-image's primitives (scale 1 only).

A plain rendering of REFERENCE.md section 3 (our own code, no hpacellseg import): the slow,
obvious version that :func:`hpa_kit.segment.label_cells` must equal at scale 1.0. It pins our
faster building blocks (lookup-table thresholds, bincount size filters, OpenCV closing,
labelling-based hole filling) to scikit-image's in the tests, and it is the speed baseline of
``benchmarks/bench_segment.py``, so it must stay unoptimised: the same scikit-image and scipy
calls, in the same order, with the same parameters as the package's ``label_cell``, step for
step as REFERENCE.md section 3 lists them (the seed threshold is written ``0.4 - 0.25`` as the
package computes it). Differs from hpacellseg only where label_cells deliberately does: int
labels throughout (no uint8 wrap of the cell labels), and scikit-image 0.26's size arguments
translated back to "strictly smaller than N". The package's no-op steps (the border exclusion
multiplied by a never-zero ``np.invert`` of an int8 array, the clip of the relief to itself)
are written as their effect.
"""

from __future__ import annotations

import inspect

import numpy as np
from scipy import ndimage as ndi
from skimage import filters, measure, morphology, segmentation

__all__ = ["reference_label_cell"]

# scikit-image 0.26 replaced min_size / area_threshold ("< N") by max_size ("<= N").
_NEW_API = "max_size" in inspect.signature(morphology.remove_small_objects).parameters


def _small_objects(x: np.ndarray, n: int) -> np.ndarray:
    """Remove objects (or labels) strictly smaller than ``n`` pixels."""
    if _NEW_API:
        return morphology.remove_small_objects(x, max_size=n - 1)
    return morphology.remove_small_objects(x, min_size=n)  # pragma: no cover - old skimage


def _small_holes(x: np.ndarray, n: int) -> np.ndarray:
    """Fill holes strictly smaller than ``n`` pixels."""
    if _NEW_API:
        return morphology.remove_small_holes(x, max_size=n - 1)
    return morphology.remove_small_holes(x, area_threshold=n)  # pragma: no cover - old skimage


def _fill_holes(labels: np.ndarray) -> np.ndarray:
    cut = labels * ~segmentation.find_boundaries(labels)
    return ndi.label(ndi.binary_fill_holes(cut > 0))[0]


def reference_label_cell(
    nuclei_maps: np.ndarray, cell_maps: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(nuclei_labels, cell_labels)`` of full-resolution maps, the slow obvious way."""
    import warnings

    nuc, cell = nuclei_maps, cell_maps
    with warnings.catch_warnings():
        # "Only one label was provided to remove_small_objects" on single-cell images
        warnings.simplefilter("ignore", UserWarning)
        not_border = 1 - (nuc[..., 1] + cell[..., 1]).astype(np.uint8) / 255.0 > 0.05
        seeds = _small_objects((nuc[..., 2] / 255.0) * not_border > 0.4 - 0.25, 500)
        mask = _small_objects(_small_holes(nuc[..., 2] / 255.0 > 0.4, 1000), 8)
        nuclei = segmentation.watershed(
            mask.astype(np.uint8), ndi.label(seeds)[0], mask=mask, watershed_line=True
        )
        nuclei = measure.label(_small_objects(nuclei, 2500))
        level = max(0.22, filters.threshold_otsu(cell[..., 2] / 255) * 0.5)
        relief = -cell[..., 2].astype(np.float64)
        cells = segmentation.watershed(relief, nuclei, mask=cell[..., 2] / 255 > level)
        cells = _small_objects(cells, 5500)
        cells = _fill_holes(morphology.closing(cells, morphology.disk(6)))
        grow = (cells > 0) | (cell[..., 1] / 255 > 0.05)
        cells = segmentation.watershed(relief, cells, mask=grow)
        cells = measure.label(_fill_holes(cells) > 0)
        cells = measure.label(_small_objects(cells, 5500))
        inside = _small_objects(measure.label((cells > 0) & (nuclei > 0)), 2500)
    return (cells * (inside > 0)).astype(np.int32), cells.astype(np.int32)

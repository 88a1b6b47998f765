"""Weights-free prediction maps from the image channels themselves.

:func:`classical_maps` produces maps in the networks' format (HxWx3 uint8 at ``scale`` of the
image; channel 0 = 0, channel 1 = touching border, channel 2 = foreground probability x 255)
so that :func:`hpa_kit.segment.label_cells` runs on them unchanged. It lets the whole pipeline
run where hpacellseg's weights are absent.

Method (all lengths and areas in full-resolution pixels of a 2048 px HPA image, declared in
:class:`ClassicalConfig` and scaled by ``s = scale / pixel_size``: lengths x s, areas x s^2):

1. Area-resize the RGBY image to the reduced size; smooth blue and (red + yellow) / 2 with a
   gaussian (``smooth_sigma``).
2. Nuclei foreground: a logistic function of log(blue) centred on blue's Otsu threshold and
   placed so that the threshold lands on 0.4, label_cells' nucleus-mask level.
3. Cell foreground: a logistic function of log(cytoplasm) centred on ``cell_otsu_factor``
   times the Otsu threshold of log(cytoplasm) (log: cell bodies span a wide intensity range).
4. Territories: the nuclei (mask > 0.4, holes filled, small ones dropped; optionally split at
   distance-transform saddles) grow by a watershed of the smoothed cytoplasm inside the
   foreground, so touching cells part along intensity valleys. Where two territories meet,
   the cell foreground gets a gap and the cell border channel a line (128), as the cell
   network's maps have between touching cells; label_cells' second watershed then shares the
   line between the two cells.

Measured against hpacellseg's masks of the four real sample images (benchmarks/
bench_segment.py): cell F1 0.98 at IoU >= 0.5 (55 of 57 cells), mean matched IoU 0.86.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.special import expit
from skimage import filters, morphology, segmentation

from hpa_kit._boundary import label_boundaries
from hpa_kit.segment._config import _check_pixel_size, reduced_shape

__all__ = ["ClassicalConfig", "classical_maps"]

_RED, _BLUE, _YELLOW = 0, 2, 3
_NUCLEUS_LEVEL = 0.4  # SegConfig.nuclei_threshold
_BORDER_VALUE = 128


@dataclass(frozen=True)
class ClassicalConfig:
    """Constants of :func:`classical_maps`; lengths and areas in full-resolution pixels.

    :func:`classical_maps` scales them explicitly by ``s = scale / pixel_size``: the lengths
    (``smooth_sigma``, ``split_depth``, ``territory_sigma``, ``border_width``) by ``s``, the
    area ``min_nucleus_area`` by ``s**2``. A new length or area field must be added there.

    Attributes:
        smooth_sigma: gaussian sigma applied to blue and to the cytoplasm channels.
        cell_otsu_factor: cell threshold = factor x Otsu threshold of log(cytoplasm).
        steepness: slope of the logistic maps, per unit of log intensity.
        min_nucleus_area: nuclei smaller than this do not seed territories.
        split_depth: depth (px) of distance-transform maxima that split touching nuclei; 0
            turns splitting off (the default: hpacellseg's networks keep some touching pairs
            together and split others, and splitting lowered the F1 on the samples).
        territory_level: cell foreground level bounding the territories.
        territory_sigma: extra smoothing of the cytoplasm for the territory watershed.
        border_width: half-width (px) of the border lines between territories.
    """

    smooth_sigma: float = 8.0
    cell_otsu_factor: float = 1.0
    steepness: float = 6.0
    min_nucleus_area: int = 2500
    split_depth: float = 0.0
    territory_level: float = 0.25
    territory_sigma: float = 8.0
    border_width: float = 4.0


def _touching(labels: np.ndarray) -> np.ndarray:
    """Pixels of a label image with a 4-neighbour carrying another non-zero label.

    >>> _touching(np.array([[1, 1, 2], [0, 0, 2]])).astype(int)
    array([[0, 1, 1],
           [0, 0, 0]])
    """
    return label_boundaries(labels, connectivity=4, background=False)


def _label_nuclei(
    mask: np.ndarray, *, scale: float, config: ClassicalConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Label a nucleus mask (holes filled, small ones dropped), optionally splitting touching
    nuclei at distance-transform saddles. Returns the labels and the split lines. ``scale``:
    map pixels per full-resolution pixel (``scale / pixel_size`` of :func:`classical_maps`)."""
    mask = ndi.binary_fill_holes(mask)
    labels, _ = ndi.label(mask)
    small = np.bincount(labels.ravel()) < config.min_nucleus_area * scale * scale
    small[0] = False
    mask &= ~small[labels]
    depth = config.split_depth * scale
    if depth <= 0:
        labels, _ = ndi.label(mask)
        return labels, np.zeros(mask.shape, bool)
    distance = ndi.distance_transform_edt(mask)
    markers, _ = ndi.label(morphology.h_maxima(distance, depth) & mask)
    labels = segmentation.watershed(-distance, markers, mask=mask)
    return labels, _touching(labels)


def _log_otsu(values: np.ndarray) -> float:
    """Otsu threshold of log(1 + values), back in intensity units (0 for a flat image)."""
    logs = np.log1p(values)
    if float(logs.max()) - float(logs.min()) < 1e-6:
        return 0.0
    return float(np.expm1(filters.threshold_otsu(logs)))


def classical_maps(
    image: np.ndarray,
    *,
    scale: float = 0.25,
    config: ClassicalConfig = ClassicalConfig(),  # noqa: B008 - frozen, immutable
    pixel_size: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Nuclei and cell maps for an RGBY uint8 image, without network weights.

    Args:
        image: HxWx4 uint8, channels (red, green, blue, yellow).
        scale: size of the maps relative to the image (:func:`reduced_shape`).
        config: the method's constants (full-resolution pixels).
        pixel_size: full-resolution HPA pixels per image pixel (> 0): 2 for a 1024 px image
            of a 2048 px one. The constants are scaled by ``scale / pixel_size``.

    Returns:
        ``(nuclei_maps, cell_maps)``, each HxWx3 uint8 at the reduced size, in the format of
        :func:`hpa_kit.segment.predict_maps`; label them with
        ``SegConfig(scale=scale, pixel_size=pixel_size)``.

    >>> image = np.zeros((256, 256, 4), np.uint8)
    >>> yy, xx = np.mgrid[:256, :256]
    >>> image[..., 0] = np.where((yy - 128) ** 2 + (xx - 128) ** 2 < 90**2, 80, 2)  # cell body
    >>> image[..., 2] = np.where((yy - 128) ** 2 + (xx - 128) ** 2 < 40**2, 200, 0)  # nucleus
    >>> nuclei_maps, cell_maps = classical_maps(image, scale=0.25)
    >>> nuclei_maps.shape, cell_maps.dtype, int(nuclei_maps[32, 32, 2]) > 200, int(cell_maps[2, 2, 2])
    ((64, 64, 3), dtype('uint8'), True, 0)
    """
    import cv2

    if image.ndim != 3 or image.shape[2] < 4 or image.dtype != np.uint8:
        raise ValueError(
            f"expected an HxWx4 RGBY uint8 image, got shape {image.shape} dtype {image.dtype}"
        )
    _check_pixel_size(pixel_size)
    rows, cols = reduced_shape(image.shape[:2], scale)
    # Every length of the config x s, every area x s**2 (full-resolution px -> map px).
    s = scale / pixel_size
    small = image[..., :4]
    if (rows, cols) != image.shape[:2]:
        small = cv2.resize(small, (cols, rows), interpolation=cv2.INTER_AREA)
    small = small.astype(np.float32)
    sigma = config.smooth_sigma * s
    blue = filters.gaussian(small[..., _BLUE], sigma=sigma, preserve_range=True)
    cyto = (small[..., _RED] + small[..., _YELLOW]) / 2
    cyto = filters.gaussian(cyto, sigma=sigma, preserve_range=True)

    # Foreground probabilities: logistic in log intensity around data-driven thresholds.
    nuclei_level = np.log1p(float(filters.threshold_otsu(blue)) if np.ptp(blue) > 0 else 255.0)
    nuc_p = expit(
        config.steepness * (np.log1p(blue) - nuclei_level)
        + np.log(_NUCLEUS_LEVEL / (1 - _NUCLEUS_LEVEL))
    )
    cell_level = np.log1p(config.cell_otsu_factor * _log_otsu(cyto)) if np.ptp(cyto) > 0 else 1e3
    cell_p = expit(config.steepness * (np.log1p(cyto) - cell_level))

    # Territories of the nuclei inside the foreground; lines where two of them meet.
    nuclei, nuclei_lines = _label_nuclei(nuc_p > _NUCLEUS_LEVEL, scale=s, config=config)
    foreground = (cell_p > config.territory_level) | (nuclei > 0)
    relief = -filters.gaussian(cyto, sigma=config.territory_sigma * s, preserve_range=True)
    territories = segmentation.watershed(relief, nuclei, mask=foreground)
    lines = _touching(territories)
    width = int(round(config.border_width * s))
    if width > 0 and lines.any():
        lines = ndi.binary_dilation(lines, iterations=width) & foreground
    cell_p[lines] = 0.0

    nuclei_maps = np.zeros((rows, cols, 3), np.uint8)
    cell_maps = np.zeros((rows, cols, 3), np.uint8)
    nuclei_maps[..., 1] = np.where(nuclei_lines, 255, 0)
    nuclei_maps[..., 2] = np.round(nuc_p * 255)
    # keep the border sum below 256 (label_cells adds the two border channels in uint8)
    cell_maps[..., 1] = np.where(lines & ~nuclei_lines, _BORDER_VALUE, 0)
    cell_maps[..., 2] = np.round(cell_p * 255)
    return nuclei_maps, cell_maps

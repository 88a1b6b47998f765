"""Synthetic HPA-like images with known cells, nuclei and per-cell classes.

Data contract
-------------
- :func:`generate_image` returns a :class:`SynthImage`: ``image`` is ``(height, width, 4)``
  ``uint8`` in :data:`hpa_kit.io.CHANNELS` order (red microtubules, green protein, blue nuclei,
  yellow ER); ``cell_labels`` and ``nuclei_labels`` are 2-D ``int32`` label images (0 =
  background, cells 1..N); a nucleus carries the id of its cell and lies inside it;
  ``cell_classes[cell]`` is the sorted tuple of that cell's classes; ``image_labels`` is the
  sorted union over the cells (what an image-level ``train.csv`` row would say).
- Sizes are ``int`` (square) or ``(height, width)``. Every length (cell radii, texture
  wavelengths, blur) is a fraction of ``sqrt(height * width)``, so a 256 px image has the same
  number of cells as a 2048 px one, only smaller.
- Same ``seed`` (anything :func:`numpy.random.default_rng` accepts) and config -> the same
  bytes. All randomness comes from one ``numpy.random.Generator``.

What an image looks like
------------------------
Cells are placed by dart throwing (Poisson-disc-like: centres at least ``0.8 * (r_i + r_j)``
apart), anywhere in the image, so some are cut by the image edge. Each cell is a perturbed
ellipse (random radius, elongation, angle, low harmonics of the outline, a little boundary
noise); pixels go to the cell with the smallest normalised distance (a multiplicatively
weighted Voronoi split), so neighbours touch along curved borders; a cell keeps only its
connected piece around its centre. A nucleus is a smaller perturbed ellipse near the cell's
centre, kept inside the cell. Cells that end up too small or whose nucleus is mostly outside
the image are dropped before anything is drawn. The distance fields are evaluated every
``radius / 40`` px and interpolated bilinearly (sub-pixel outlines, a fraction of the cost).

- blue: nuclei with chromatin texture and soft edges;
- red: microtubules, curved fibres radiating from the nucleus over a faint cytoplasm;
- yellow: ER, a reticular network that is densest around the nucleus;
- green: a class-specific pattern per cell (:data:`PATTERN_CLASSES`):

  ==  =====================  ==================================================
  0   Nucleoplasm            nucleus filled evenly, nucleoli left dark
  1   Nuclear membrane       thin ring on the nucleus edge
  2   Nucleoli               1-4 large bright blobs inside the nucleus
  4   Nuclear speckles       15-35 small dots over the nucleus
  7   Golgi apparatus        compact cluster of blobs on one side of the nucleus
  13  Plasma membrane        thin ring on the cell edge
  14  Mitochondria           network of short tubules filling the cytoplasm
  16  Cytosol                smooth fill of the cytoplasm, nucleus dark
  17  Vesicles               25-60 distinct puncta over the cytoplasm
  18  Negative               nothing (background noise only)
  ==  =====================  ==================================================

  Nuclear and cytoplasmic patterns sit in different places, and within each group they differ
  in texture (even / ring / few big blobs / many small dots), which stays visible in 64-128 px
  crops of one cell because every pattern length is a fraction of the cell's radius.

Classes in an image
-------------------
An image draws 1-3 classes (probabilities ``SynthConfig.classes_per_image``) from
``SynthConfig.classes``; every drawn class is given to at least one cell, the other cells get
one of them at random, and a fraction of cells (``double_class_fraction``) carry two. The
image-level labels are the union, so most cells carry fewer classes than their image.
Negative (18) is never combined: with probability ``negative_fraction`` a whole image is
negative (all cells ``(18,)``), otherwise no cell is negative. This matches the real
``train.csv``, where 18 is never combined with another label.

Then an uneven illumination field (all channels), a little out-of-focus haze around cells
(red, yellow), a small background offset and noise of standard deviation
``sqrt(noise**2 + 0.3 * signal)`` (triangular, from two uniform bytes: close to Gaussian and
cheaper to draw).

>>> s = generate_image(size=128, seed=0)
>>> s.image.shape, s.image.dtype.name, s.cell_labels.dtype.name
((128, 128, 4), 'uint8', 'int32')
>>> sorted(s.cell_classes) == list(range(1, s.cell_labels.max() + 1))
True
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hpa_kit.labels import NEGATIVE, NUM_CLASSES

__all__ = [
    "PATTERN_CLASSES",
    "SynthConfig",
    "SynthDataset",
    "SynthImage",
    "class_counts",
    "generate_image",
    "write_dataset",
]

PATTERN_CLASSES: tuple[int, ...] = (0, 1, 2, 4, 7, 13, 14, 16, 17, 18)
"""Classes with a green pattern here; 18 (negative) is no signal."""


def _cv2():
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover - cv2 is a hard dependency
        raise ImportError("hpa_kit.synth needs OpenCV: pip install opencv-python-headless") from exc
    return cv2


def _check_range(name: str, value: Sequence[float], low: float, high: float) -> None:
    if len(value) != 2 or not (low <= value[0] <= value[1] <= high):
        raise ValueError(
            f"SynthConfig.{name} must be (min, max) within [{low}, {high}], got {value}"
        )


@dataclass(frozen=True)
class SynthConfig:
    """How synthetic images are drawn. Lengths are fractions of ``sqrt(height * width)``.

    - ``cells``: (min, max) cells placed per image, inclusive; a placed cell is dropped only
      when squeezed below a fifth of its area or its nucleus is mostly outside the image.
    - ``cell_radius``: (min, max) radius of a cell before neighbours cut it (real 2048 px
      images: equivalent radius 0.03-0.2, median about 0.06-0.11, of the image side).
    - ``elongation``: (min, max) ratio of a cell's long to short axis.
    - ``nucleus_fraction``: (min, max) nucleus radius over cell radius.
    - ``classes``: classes drawn from (non-negative, from :data:`PATTERN_CLASSES`).
    - ``classes_per_image``: probabilities of 1, 2, 3, ... distinct classes in an image
      (capped at the number of ``classes`` and of cells).
    - ``double_class_fraction``: fraction of cells carrying two of the image's classes.
    - ``negative_fraction``: fraction of images whose cells are all negative (18).
    - ``noise``: standard deviation of the additive noise, in grey levels.
    - ``illumination``: strength of the uneven brightness (log-scale standard deviation).
    """

    cells: tuple[int, int] = (10, 30)
    cell_radius: tuple[float, float] = (0.065, 0.125)
    elongation: tuple[float, float] = (1.0, 1.8)
    nucleus_fraction: tuple[float, float] = (0.36, 0.5)
    classes: tuple[int, ...] = (0, 1, 2, 4, 13, 14, 16, 17)
    classes_per_image: tuple[float, ...] = (0.15, 0.45, 0.4)
    double_class_fraction: float = 0.15
    negative_fraction: float = 0.05
    noise: float = 1.5
    illumination: float = 0.15

    def __post_init__(self) -> None:
        if len(self.cells) != 2 or not (1 <= self.cells[0] <= self.cells[1]):
            raise ValueError(
                f"SynthConfig.cells must be (min, max) with 1 <= min <= max, got {self.cells}"
            )
        _check_range("cell_radius", self.cell_radius, 0.005, 0.5)
        _check_range("elongation", self.elongation, 1.0, 4.0)
        _check_range("nucleus_fraction", self.nucleus_fraction, 0.1, 0.7)
        bad = [c for c in self.classes if c not in PATTERN_CLASSES or c == NEGATIVE]
        if not self.classes or bad or len(set(self.classes)) != len(self.classes):
            raise ValueError(
                f"SynthConfig.classes must be distinct classes from {PATTERN_CLASSES[:-1]} "
                f"(negative is set by negative_fraction), got {self.classes}"
            )
        probs = np.asarray(self.classes_per_image, dtype=np.float64)
        if probs.size == 0 or np.any(probs < 0) or not math.isclose(probs.sum(), 1.0, abs_tol=1e-6):
            raise ValueError(
                f"SynthConfig.classes_per_image must be probabilities summing to 1, got "
                f"{self.classes_per_image}"
            )
        for name in ("double_class_fraction", "negative_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"SynthConfig.{name} must be in [0, 1], got {value}")
        if self.noise < 0 or self.illumination < 0:
            raise ValueError(
                f"SynthConfig.noise and illumination must be >= 0, got {self.noise}, "
                f"{self.illumination}"
            )


@dataclass(frozen=True)
class SynthImage:
    """One generated image and its truth (see the module docstring for the contract)."""

    image: np.ndarray
    cell_labels: np.ndarray
    nuclei_labels: np.ndarray
    cell_classes: dict[int, tuple[int, ...]]
    image_labels: tuple[int, ...]

    @property
    def num_cells(self) -> int:
        return len(self.cell_classes)

    @property
    def label_string(self) -> str:
        """Image-level labels as in ``train.csv`` (ascending, ``|``-separated)."""
        return "|".join(str(c) for c in self.image_labels)


@dataclass(frozen=True)
class SynthDataset:
    """What :func:`write_dataset` wrote. ``failures`` maps image id -> cause (kept going)."""

    out: Path
    ids: tuple[str, ...]
    train_csv: Path
    sample_submission: Path
    truth: Path
    num_cells: int
    failures: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# small numeric helpers


def _size(size: int | Sequence[int]) -> tuple[int, int]:
    from hpa_kit.io import size_pair

    height, width = size_pair(size)
    if height < 32 or width < 32:
        raise ValueError(
            f"size must be at least 32 x 32 pixels, got (height, width) {(height, width)}"
        )
    return height, width


def _smooth_noise(
    rng: np.random.Generator, shape: tuple[int, int], wavelength: float
) -> np.ndarray:
    """Float32 noise of about unit standard deviation varying over ``wavelength`` pixels."""
    cv2 = _cv2()
    height, width = shape
    wavelength = max(float(wavelength), 1.0)
    grid_h = max(2, int(math.ceil(height / wavelength)) + 1)
    grid_w = max(2, int(math.ceil(width / wavelength)) + 1)
    grid = rng.standard_normal((grid_h, grid_w), dtype=np.float32)
    field_ = cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    std = float(field_.std())
    return field_ / std if std > 1e-6 else field_


def _ridge(noise: np.ndarray, width: float) -> np.ndarray:
    """Thin lines along the zero crossings of ``noise`` (a network), values in [0, 1]."""
    return np.exp(-np.square(noise / width))


def _soft_inside(distance: np.ndarray, edge: float) -> np.ndarray:
    """1 well inside (normalised distance << 1), falling to 0 at distance 1 over ``edge``."""
    return np.clip((1.0 - distance) / edge, 0.0, 1.0)


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0.3:
        return image
    return _cv2().GaussianBlur(image, (0, 0), sigmaX=float(sigma), borderType=4)


def _dots(
    rng: np.random.Generator,
    shape: tuple[int, int],
    where: np.ndarray,
    count: int,
    radius: float,
    *,
    spread: float = 0.3,
) -> np.ndarray:
    """``count`` blurred discs of about ``radius`` px at random pixels of ``where``."""
    cv2 = _cv2()
    canvas = np.zeros(shape, dtype=np.float32)
    candidates = np.flatnonzero(where)
    if candidates.size == 0 or count <= 0:
        return canvas
    picks = rng.choice(candidates, size=count, replace=candidates.size < count)
    radii = radius * rng.uniform(1.0 - spread, 1.0 + spread, size=count)
    levels = rng.uniform(0.6, 1.0, size=count)
    rows, cols = np.unravel_index(picks, shape)
    for row, col, rad, level in zip(rows, cols, radii, levels, strict=True):
        # shift 4 = coordinates in 1/16 px, so sub-pixel radii stay distinct
        cv2.circle(
            canvas,
            (int(col * 16 + 8), int(row * 16 + 8)),
            max(8, int(rad * 16)),
            float(level),
            -1,
            cv2.LINE_AA,
            4,
        )
    return _blur(canvas, 0.35 * radius)


# --------------------------------------------------------------------------------------------
# layout


@dataclass
class _Cell:
    center: tuple[float, float]  # (row, col)
    radius: float
    axes: tuple[float, float]  # (a, b) semi-axes along the rotated (u, v) directions
    angle: float
    harmonics: np.ndarray  # (k, amplitude, phase) rows
    nucleus_center: tuple[float, float]
    nucleus_axes: tuple[float, float]
    nucleus_angle: float
    nucleus_harmonics: np.ndarray
    box: tuple[slice, slice] = (slice(0, 0), slice(0, 0))
    distance: np.ndarray | None = None  # normalised cell distance in box
    nucleus_distance: np.ndarray | None = None


def _harmonics(rng: np.random.Generator, amplitude: float) -> np.ndarray:
    ks = np.arange(2, 6, dtype=np.float64)
    amps = rng.uniform(0.0, amplitude, size=ks.size) / ks
    phases = rng.uniform(0.0, 2.0 * math.pi, size=ks.size)
    return np.stack([ks, amps, phases], axis=1)


def _ellipse_distance(
    rows: np.ndarray,
    cols: np.ndarray,
    center: tuple[float, float],
    axes: tuple[float, float],
    angle: float,
    harmonics: np.ndarray,
) -> np.ndarray:
    """Normalised distance (1 on the outline) to a perturbed ellipse, on an open grid."""
    dy = rows - np.float32(center[0])
    dx = cols - np.float32(center[1])
    cos, sin = np.float32(math.cos(angle)), np.float32(math.sin(angle))
    u = (cos * dy + sin * dx) / np.float32(axes[0])
    v = (cos * dx - sin * dy) / np.float32(axes[1])
    rho = np.sqrt(u * u + v * v)
    # cos(k phi), sin(k phi) by the angle-addition recurrence (no arctan2, no cos per k)
    safe = np.maximum(rho, np.float32(1e-6))
    c1, s1 = u / safe, v / safe
    ck, sk = c1, s1
    outline = np.ones_like(rho)
    for k in range(1, int(harmonics[:, 0].max()) + 1):
        if k > 1:
            ck, sk = ck * c1 - sk * s1, sk * c1 + ck * s1
        for kk, amp, phase in harmonics:
            if int(kk) == k:  # amp * cos(k phi + phase)
                outline += np.float32(amp * math.cos(phase)) * ck
                outline -= np.float32(amp * math.sin(phase)) * sk
    return rho / outline


def _distance_field(
    box: tuple[slice, slice],
    center: tuple[float, float],
    axes: tuple[float, float],
    angle: float,
    harmonics: np.ndarray,
    step: int,
) -> np.ndarray:
    """:func:`_ellipse_distance` over ``box``, evaluated every ``step`` px and interpolated.

    The field is smooth, so sampling at the centres of ``step`` x ``step`` blocks and
    resizing linearly (OpenCV's pixel-centre convention makes the samples land exactly on
    those centres) gives sub-pixel outlines at a fraction of the cost.
    """
    height = box[0].stop - box[0].start
    width = box[1].stop - box[1].start
    if step <= 1:
        rows = np.arange(box[0].start, box[0].stop, dtype=np.float32)[:, None]
        cols = np.arange(box[1].start, box[1].stop, dtype=np.float32)[None, :]
        return _ellipse_distance(rows, cols, center, axes, angle, harmonics)
    n_rows, n_cols = -(-height // step), -(-width // step)
    offset = (step - 1) / 2.0
    rows = (box[0].start + offset + step * np.arange(n_rows, dtype=np.float32))[:, None]
    cols = (box[1].start + offset + step * np.arange(n_cols, dtype=np.float32))[None, :]
    coarse = _ellipse_distance(rows, cols, center, axes, angle, harmonics)
    fine = _cv2().resize(coarse, (n_cols * step, n_rows * step), interpolation=1)
    return np.ascontiguousarray(fine[:height, :width])


def _place_centers(
    rng: np.random.Generator, shape: tuple[int, int], radii: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Dart throwing: centres >= 0.8 (r_i + r_j) apart; a radius shrinks when it cannot fit."""
    height, width = shape
    centers: list[np.ndarray] = []
    kept: list[float] = []
    for radius in radii:
        radius = float(radius)
        for _ in range(12):
            cand = rng.uniform((0.0, 0.0), (height, width), size=(64, 2))
            if centers:
                gap = np.linalg.norm(cand[:, None, :] - np.asarray(centers)[None], axis=2)
                ok = np.all(gap >= 0.8 * (radius + np.asarray(kept))[None], axis=1)
            else:
                ok = np.ones(len(cand), dtype=bool)
            if ok.any():
                centers.append(cand[int(np.argmax(ok))])
                kept.append(radius)
                break
            radius *= 0.88
    return np.asarray(centers, dtype=np.float64).reshape(-1, 2), np.asarray(kept)


def _layout(
    rng: np.random.Generator, shape: tuple[int, int], config: SynthConfig
) -> tuple[np.ndarray, np.ndarray, list[_Cell]]:
    """``(cell labels, nuclei labels, kept cells)``: cells drawn and placed, pixels given to
    the nearest cell, then each cell settled (one piece, a nucleus inside) or dropped."""
    cells = _draw_cells(rng, shape, config)
    labels = _assign_pixels(rng, shape, cells)
    nuclei = np.zeros(shape, dtype=np.int32)
    keep = np.zeros(len(cells) + 1, dtype=bool)
    for index, cell in enumerate(cells, start=1):
        nucleus = _settle_cell(labels, cell, index)
        if nucleus is not None:
            keep[index] = True
            nuclei[cell.box][nucleus] = index
    lut = np.zeros(len(cells) + 1, dtype=np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    kept = [cell for index, cell in enumerate(cells, start=1) if keep[index]]
    return lut[labels], lut[nuclei], kept


def _draw_cells(
    rng: np.random.Generator, shape: tuple[int, int], config: SynthConfig
) -> list[_Cell]:
    """Cell count, radii, centres (dart throwing), shapes and nuclei of one image."""
    height, width = shape
    unit = math.sqrt(height * width)
    count = int(rng.integers(config.cells[0], config.cells[1] + 1))
    radii = rng.uniform(*config.cell_radius, size=count) * unit
    cover = float(np.sum(np.pi * radii**2)) / (height * width)
    if cover > 0.85:  # too crowded to place: shrink all cells alike
        radii *= math.sqrt(0.85 / cover)
    centers, radii = _place_centers(rng, shape, radii)

    cells: list[_Cell] = []
    for (row, col), radius in zip(centers, radii, strict=True):
        elong = rng.uniform(*config.elongation)
        a, b = radius * math.sqrt(elong), radius / math.sqrt(elong)
        angle = rng.uniform(0.0, math.pi)
        frac = rng.uniform(*config.nucleus_fraction)
        n_elong = min(elong, rng.uniform(1.0, 1.5))
        rn = frac * radius
        offset = rng.normal(0.0, 0.08 * radius, size=2)
        cells.append(
            _Cell(
                center=(float(row), float(col)),
                radius=float(radius),
                axes=(a, b),
                angle=angle,
                harmonics=_harmonics(rng, 0.45),
                nucleus_center=(float(row + offset[0]), float(col + offset[1])),
                nucleus_axes=(rn * math.sqrt(n_elong), rn / math.sqrt(n_elong)),
                nucleus_angle=angle + rng.normal(0.0, 0.3),
                nucleus_harmonics=_harmonics(rng, 0.12),
            )
        )
    return cells


def _assign_pixels(
    rng: np.random.Generator, shape: tuple[int, int], cells: list[_Cell]
) -> np.ndarray:
    """Label image (cells 1..N in list order) where each pixel goes to the cell of smallest
    normalised distance below 1 (a weighted Voronoi split); sets each cell's box and
    distance field."""
    height, width = shape
    best = np.full(shape, np.inf, dtype=np.float32)
    owner = np.zeros(shape, dtype=np.int32)
    for index, cell in enumerate(cells, start=1):
        # farthest outline point, with margin for the boundary noise (x 1.2)
        reach = max(cell.axes) * (1.0 + float(cell.harmonics[:, 1].sum())) * 1.2 + 2.0
        r0 = max(0, int(cell.center[0] - reach))
        r1 = min(height, int(cell.center[0] + reach) + 1)
        c0 = max(0, int(cell.center[1] - reach))
        c1 = min(width, int(cell.center[1] + reach) + 1)
        cell.box = (slice(r0, r1), slice(c0, c1))
        step = max(1, int(cell.radius / 40.0))
        dist = _distance_field(cell.box, cell.center, cell.axes, cell.angle, cell.harmonics, step)
        dist *= 1.0 + 0.05 * _smooth_noise(rng, dist.shape, 0.35 * cell.radius)
        cell.distance = dist
        local_best = best[cell.box]
        closer = dist < local_best
        local_best[closer] = dist[closer]
        owner[cell.box][closer] = index
    return np.where(best < 1.0, owner, 0).astype(np.int32)


def _settle_cell(labels: np.ndarray, cell: _Cell, index: int) -> np.ndarray | None:
    """Keep only cell ``index``'s piece around its centre (in ``labels``, in place), shrink
    its box to that piece and draw its nucleus there; returns the nucleus mask (in the box),
    or None when the cell is too small or its nucleus mostly outside the image (drop it)."""
    from scipy import ndimage as ndi

    box_labels = labels[cell.box]
    own = box_labels == index
    pieces, count = ndi.label(own)
    if count > 1:  # a weighted Voronoi region can split: keep the piece nearest the centre
        sizes = np.bincount(pieces.ravel(), minlength=count + 1)
        centre = pieces[cell.distance < 0.35]
        votes = np.bincount(centre[centre > 0], minlength=count + 1)
        best_piece = int(np.argmax(votes[1:] * (sizes.max() + 1) + sizes[1:])) + 1
        box_labels[own & (pieces != best_piece)] = 0
        own = pieces == best_piece
    rows_any = np.flatnonzero(own.any(axis=1))
    cols_any = np.flatnonzero(own.any(axis=0))
    if rows_any.size == 0:
        return None
    # from here on the cell works in its tight bounding box
    crop = (slice(rows_any[0], rows_any[-1] + 1), slice(cols_any[0], cols_any[-1] + 1))
    r0, c0 = cell.box[0].start, cell.box[1].start
    cell.box = (
        slice(r0 + crop[0].start, r0 + crop[0].stop),
        slice(c0 + crop[1].start, c0 + crop[1].stop),
    )
    own = own[crop]
    cell.distance = cell.distance[crop]
    cell.nucleus_distance = _distance_field(
        cell.box,
        cell.nucleus_center,
        cell.nucleus_axes,
        cell.nucleus_angle,
        cell.nucleus_harmonics,
        max(1, int(cell.radius / 60.0)),
    )
    nucleus = own & (cell.nucleus_distance < 1.0) & (cell.distance < 0.92)
    na, nb = cell.nucleus_axes
    big_enough = own.sum() >= 0.2 * math.pi * cell.radius**2
    if big_enough and nucleus.sum() >= 0.3 * math.pi * na * nb:
        return nucleus
    return None


# --------------------------------------------------------------------------------------------
# classes


def _assign_classes(
    rng: np.random.Generator, n_cells: int, config: SynthConfig
) -> dict[int, tuple[int, ...]]:
    if n_cells == 0:
        return {}
    if rng.random() < config.negative_fraction:
        return {cell: (NEGATIVE,) for cell in range(1, n_cells + 1)}
    probs = np.asarray(config.classes_per_image, dtype=np.float64)
    k = int(rng.choice(np.arange(1, probs.size + 1), p=probs / probs.sum()))
    k = min(k, len(config.classes), n_cells)
    chosen = [int(c) for c in rng.choice(np.asarray(config.classes), size=k, replace=False)]
    first = np.asarray(chosen + [int(c) for c in rng.choice(chosen, size=n_cells - k)])
    first = first[rng.permutation(n_cells)]
    doubles = rng.random(n_cells) < config.double_class_fraction
    seconds = rng.integers(0, k, size=n_cells)
    out: dict[int, tuple[int, ...]] = {}
    for cell in range(n_cells):
        classes = {int(first[cell])}
        if doubles[cell] and k > 1:
            other = chosen[int(seconds[cell])]
            if other == first[cell]:
                other = chosen[(int(seconds[cell]) + 1) % k]
            classes.add(other)
        out[cell + 1] = tuple(sorted(classes))
    return out


# --------------------------------------------------------------------------------------------
# green patterns: each takes the cell's local geometry and returns float32 in about [0, 1]


@dataclass
class _Geometry:
    cell: np.ndarray  # bool, this cell's pixels in the box
    nucleus: np.ndarray  # bool
    cytoplasm: np.ndarray  # bool
    distance: np.ndarray  # normalised cell distance (0 centre, 1 outline)
    nucleus_distance: np.ndarray
    edge_distance: np.ndarray  # px to the cell's own border (neighbours and background)
    radius: float
    nucleus_radius: float
    nucleus_center: tuple[float, float]  # local (row, col)


def _bright_dots(
    rng: np.random.Generator,
    g: _Geometry,
    where: np.ndarray,
    counts: tuple[int, int],
    radius: float,
    *,
    spread: float,
    gain: float,
) -> np.ndarray:
    """:func:`_dots` in ``where`` (their number drawn from ``counts``, high end excluded),
    times ``gain``, clipped to [0, 1]."""
    count = int(rng.integers(*counts))
    dots = _dots(rng, g.cell.shape, where, count, radius, spread=spread)
    return np.clip(dots * gain, 0.0, 1.0)


def _nucleoplasm(rng: np.random.Generator, g: _Geometry) -> np.ndarray:
    texture = 0.85 + 0.15 * _smooth_noise(rng, g.cell.shape, 0.15 * g.nucleus_radius)
    where = g.nucleus & (g.nucleus_distance < 0.6)
    holes = _bright_dots(rng, g, where, (1, 4), 0.16 * g.nucleus_radius, spread=0.3, gain=1.0)
    inside = _soft_inside(g.nucleus_distance, 0.12) * g.nucleus
    return inside * texture * (1.0 - 0.8 * holes)


def _nuclear_membrane(rng: np.random.Generator, g: _Geometry) -> np.ndarray:
    width = max(0.07, 1.2 / max(g.nucleus_radius, 1.0))
    ring = _ridge(g.nucleus_distance - 0.95, width)
    texture = 0.8 + 0.2 * _smooth_noise(rng, g.cell.shape, 0.3 * g.nucleus_radius)
    return (ring * texture + 0.06 * g.nucleus) * g.cell


def _nucleoli(rng: np.random.Generator, g: _Geometry) -> np.ndarray:
    where = g.nucleus & (g.nucleus_distance < 0.55)
    blobs = _bright_dots(rng, g, where, (1, 5), 0.2 * g.nucleus_radius, spread=0.25, gain=1.3)
    return blobs * g.nucleus + 0.04 * g.nucleus


def _speckles(rng: np.random.Generator, g: _Geometry) -> np.ndarray:
    where = g.nucleus & (g.nucleus_distance < 0.85)
    dots = _bright_dots(rng, g, where, (15, 36), 0.075 * g.nucleus_radius, spread=0.4, gain=1.4)
    return (dots + 0.1) * g.nucleus


def _golgi(rng: np.random.Generator, g: _Geometry) -> np.ndarray:
    rows, cols = np.indices(g.cell.shape, dtype=np.float32)
    side = rng.uniform(0.0, 2.0 * math.pi)
    reach = 1.35 * g.nucleus_radius
    target = (
        g.nucleus_center[0] + reach * math.sin(side),
        g.nucleus_center[1] + reach * math.cos(side),
    )
    near = np.hypot(rows - target[0], cols - target[1]) < 0.7 * g.nucleus_radius
    where = near & g.cytoplasm
    blobs = _bright_dots(rng, g, where, (6, 12), 0.14 * g.nucleus_radius, spread=0.4, gain=1.3)
    return blobs * g.cell


def _plasma_membrane(rng: np.random.Generator, g: _Geometry) -> np.ndarray:
    width = max(1.0, 0.035 * g.radius)
    ring = np.exp(-np.square(g.edge_distance / width))
    texture = 0.8 + 0.2 * _smooth_noise(rng, g.cell.shape, 0.2 * g.radius)
    return (ring * texture + 0.06 * g.cytoplasm) * g.cell


def _mitochondria(rng: np.random.Generator, g: _Geometry) -> np.ndarray:
    tubes = _ridge(_smooth_noise(rng, g.cell.shape, 0.09 * g.radius), 0.35)
    breaks = _smooth_noise(rng, g.cell.shape, 0.16 * g.radius) > -0.4
    envelope = np.clip(1.25 - 0.5 * g.distance, 0.0, 1.0)
    return tubes * breaks * envelope * _soft_inside(g.distance, 0.08) * g.cytoplasm


def _cytosol(rng: np.random.Generator, g: _Geometry) -> np.ndarray:
    texture = 0.88 + 0.12 * _smooth_noise(rng, g.cell.shape, 0.25 * g.radius)
    fill = np.clip(1.0 - 0.3 * g.distance, 0.0, 1.0) * texture * g.cytoplasm
    return fill + 0.08 * g.nucleus


def _vesicles(rng: np.random.Generator, g: _Geometry) -> np.ndarray:
    where = g.cytoplasm & (g.edge_distance > 0.03 * g.radius)
    dots = _bright_dots(rng, g, where, (25, 61), 0.04 * g.radius, spread=0.35, gain=1.4)
    return dots * g.cell + 0.04 * g.cytoplasm


def _negative(rng: np.random.Generator, g: _Geometry) -> np.ndarray:
    return np.zeros(g.cell.shape, dtype=np.float32)


_PATTERNS: dict[int, Callable[[np.random.Generator, _Geometry], np.ndarray]] = {
    0: _nucleoplasm,
    1: _nuclear_membrane,
    2: _nucleoli,
    4: _speckles,
    7: _golgi,
    13: _plasma_membrane,
    14: _mitochondria,
    16: _cytosol,
    17: _vesicles,
    18: _negative,
}


# --------------------------------------------------------------------------------------------
# rendering


def _microtubules(rng: np.random.Generator, g: _Geometry) -> np.ndarray:
    """Curved fibres radiating from around the nucleus centre, plus a faint fill."""
    cv2 = _cv2()
    n = int(rng.integers(50, 90))
    start_angle = rng.uniform(0.0, 2.0 * math.pi, size=n)
    start_r = rng.uniform(0.0, 0.5, size=n) * g.nucleus_radius
    length = rng.uniform(0.9, 1.5, size=n) * g.radius
    bend = rng.normal(0.0, 0.25, size=(n, 3))
    lines = []
    for i in range(n):
        angle = start_angle[i]
        point = np.array(
            [
                g.nucleus_center[1] + start_r[i] * math.cos(angle),
                g.nucleus_center[0] + start_r[i] * math.sin(angle),
            ]
        )
        pts = [point.copy()]
        for step in range(3):
            angle += bend[i, step]
            point = point + length[i] / 3.0 * np.array([math.cos(angle), math.sin(angle)])
            pts.append(point.copy())
        lines.append(np.round(np.asarray(pts) * 16).astype(np.int32))
    canvas = np.zeros(g.cell.shape, dtype=np.float32)
    thick = max(1, int(round(0.01 * g.radius)))
    cv2.polylines(canvas, lines, False, 1.0, thick, cv2.LINE_AA, 4)
    modulation = 0.6 + 0.4 * np.clip(_smooth_noise(rng, g.cell.shape, 0.1 * g.radius), -1.0, 1.0)
    fibres = _blur(canvas, 0.004 * g.radius) * modulation
    fill = 0.25 * np.clip(1.0 - 0.6 * g.distance, 0.0, 1.0)
    return (
        (np.clip(fibres, 0.0, 1.0) * 0.75 + fill)
        * _soft_inside(g.distance, 0.15)
        * g.cell
        * (1.0 - 0.75 * g.nucleus)
    )


def _er(rng: np.random.Generator, g: _Geometry) -> np.ndarray:
    """Reticular network, densest around the nucleus, faint over the nucleus."""
    net = _ridge(_smooth_noise(rng, g.cell.shape, 0.07 * g.radius), 0.45)
    perinuclear = np.exp(-np.maximum(g.nucleus_distance - 1.0, 0.0) / 0.8)
    envelope = np.where(g.nucleus, 0.12, 0.2 + 0.8 * perinuclear)
    return (0.25 + 0.75 * net) * envelope * _soft_inside(g.distance, 0.2) * g.cell


def _render(
    rng: np.random.Generator,
    labels: np.ndarray,
    nuclei: np.ndarray,
    cells: list[_Cell],
    classes: Mapping[int, tuple[int, ...]],
    config: SynthConfig,
) -> np.ndarray:
    """The ``(height, width, 4)`` uint8 image: each cell's channels, then optics and noise."""
    from hpa_kit.viz import find_outlines

    cv2 = _cv2()
    height, width = labels.shape
    planes = np.zeros((4, height, width), dtype=np.float32)  # red, green, blue, yellow
    outline = find_outlines(labels)
    edge_distance = cv2.distanceTransform(
        np.where(outline | (labels == 0), 0, 1).astype(np.uint8), cv2.DIST_L2, 5
    )
    for cell_id, cell in enumerate(cells, start=1):
        geometry = _cell_geometry(labels, nuclei, cell_id, cell, edge_distance)
        _draw_cell(rng, planes, cell, geometry, classes[cell_id])
    _add_optics(rng, planes, config)
    return _quantise(rng, planes, config)


def _cell_geometry(
    labels: np.ndarray, nuclei: np.ndarray, cell_id: int, cell: _Cell, edge_distance: np.ndarray
) -> _Geometry:
    """The local geometry of one cell, in its box."""
    box = cell.box
    own = labels[box] == cell_id
    nuc = nuclei[box] == cell_id
    r0, c0 = box[0].start, box[1].start
    return _Geometry(
        cell=own,
        nucleus=nuc,
        cytoplasm=own & ~nuc,
        distance=cell.distance,
        nucleus_distance=cell.nucleus_distance,
        edge_distance=edge_distance[box],
        radius=cell.radius,
        nucleus_radius=math.sqrt(cell.nucleus_axes[0] * cell.nucleus_axes[1]),
        nucleus_center=(cell.nucleus_center[0] - r0, cell.nucleus_center[1] - c0),
    )


def _draw_cell(
    rng: np.random.Generator,
    planes: np.ndarray,
    cell: _Cell,
    geometry: _Geometry,
    classes: tuple[int, ...],
) -> None:
    """Add one cell's four channels to ``planes`` (in place), in its box."""
    box = cell.box
    own, nuc = geometry.cell, geometry.nucleus
    levels = rng.uniform((110.0, 90.0, 80.0, 100.0), (200.0, 230.0, 170.0, 200.0))
    chromatin = 0.8 + 0.2 * _smooth_noise(rng, own.shape, 0.2 * geometry.nucleus_radius)
    blue = _soft_inside(cell.nucleus_distance, 0.15) * chromatin * nuc
    green = np.zeros(own.shape, dtype=np.float32)
    for cls in classes:
        green = green + _PATTERNS[cls](rng, geometry)
    # red and yellow dim towards every cell border (neighbours too), as in real cells
    border = np.clip(geometry.edge_distance / max(1.0, 0.08 * cell.radius), 0.0, 1.0)
    border = 0.5 + 0.5 * border
    planes[0][box] += levels[0] * _microtubules(rng, geometry) * border
    planes[1][box] += levels[1] * np.clip(green, 0.0, 1.2)
    planes[2][box] += levels[2] * blue
    planes[3][box] += levels[3] * _er(rng, geometry) * border


def _add_optics(rng: np.random.Generator, planes: np.ndarray, config: SynthConfig) -> None:
    """Blur, out-of-focus haze (red, yellow), uneven illumination and background offsets,
    in place."""
    cv2 = _cv2()
    height, width = planes.shape[1:]
    unit = math.sqrt(height * width)
    blur = 0.0006 * unit
    for c in range(4):
        planes[c] = _blur(planes[c], blur)
    # out-of-focus haze around cells in red and yellow
    small = (max(2, width // 8), max(2, height // 8))
    for c in (0, 3):
        low = cv2.resize(planes[c], small, interpolation=cv2.INTER_AREA)
        low = _blur(low, 0.01 * unit / 8.0)
        planes[c] += 0.12 * cv2.resize(low, (width, height), interpolation=cv2.INTER_LINEAR)
    light = np.exp(config.illumination * _smooth_noise(rng, (height, width), 0.7 * unit))
    offsets = rng.uniform((0.5, 0.0, 0.0, 0.5), (3.0, 1.0, 0.5, 3.0)).astype(np.float32)
    planes *= light[None]
    planes += offsets[:, None, None]
    np.maximum(planes, 0.0, out=planes)


def _quantise(rng: np.random.Generator, planes: np.ndarray, config: SynthConfig) -> np.ndarray:
    """Signal-dependent noise added to ``planes`` (in place), then rounded to uint8 HxWx4."""
    height, width = planes.shape[1:]
    sigma = np.sqrt(np.float32(config.noise**2) + np.float32(0.3) * planes)
    # triangular noise (sum of two uniform bytes) scaled to unit variance: close to Gaussian,
    # and several times cheaper to draw than standard_normal at these sizes
    noise = rng.integers(0, 256, size=(2, 4, height, width), dtype=np.uint8)
    tri = noise[0].astype(np.int16)
    tri += noise[1]
    tri -= 255
    sigma *= tri
    sigma *= np.float32(1.0 / math.sqrt(2.0 * (256**2 - 1) / 12.0))
    planes += sigma
    np.minimum(planes, np.float32(254.5), out=planes)
    np.maximum(planes, np.float32(-0.5), out=planes)
    planes += np.float32(0.5)  # round half up when truncating to uint8
    return _cv2().merge(list(planes.astype(np.uint8)))


# --------------------------------------------------------------------------------------------
# public API


def generate_image(
    *, size: int | Sequence[int], seed: Any, config: SynthConfig = SynthConfig()
) -> SynthImage:
    """Draw one synthetic image with its cell and nuclei label images and per-cell classes.

    ``seed``: anything :func:`numpy.random.default_rng` accepts (an int, a sequence of ints,
    a ``SeedSequence``); the same seed and config give the same bytes.
    """
    shape = _size(size)
    rng = np.random.default_rng(seed)
    labels, nuclei, cells = _layout(rng, shape, config)
    classes = _assign_classes(rng, len(cells), config)
    image = _render(rng, labels, nuclei, cells, classes, config)
    union = tuple(sorted({c for cls in classes.values() for c in cls}))
    return SynthImage(
        image=image,
        cell_labels=labels,
        nuclei_labels=nuclei,
        cell_classes=classes,
        image_labels=union,
    )


def _truth_string(synth: SynthImage) -> str:
    from hpa_kit.rle import encode_label_image
    from hpa_kit.submission import format_prediction_string

    masks = encode_label_image(synth.cell_labels)
    return format_prediction_string(
        [(cls, 1.0, masks[cell]) for cell in sorted(masks) for cls in synth.cell_classes[cell]]
    )


def write_dataset(
    out: str | os.PathLike,
    *,
    n: int,
    size: int | Sequence[int],
    seed: int,
    config: SynthConfig = SynthConfig(),
    id_prefix: str = "synth",
    progress: bool = True,
) -> SynthDataset:
    """Write ``n`` images in the competition layout, with truth, under ``out``.

    Files: ``images/{id}_{color}.png`` (four channels), ``masks/{id}_cells.png`` and
    ``masks/{id}_nuclei.png`` (16-bit label images), ``train.csv`` (``ID,Label``, image-level
    labels), ``sample_submission.csv`` (``ID,ImageWidth,ImageHeight,PredictionString`` with
    placeholder rows) and ``truth.csv`` (the same columns; every true (cell, class) as
    ``class 1 mask``, readable by ``hpa-kit score``). Image ``k`` has id
    ``{id_prefix}_{k:05d}`` and seed ``(seed, k)``, so it does not depend on ``n``. An image
    that fails to write is recorded in ``failures`` and left out of the CSVs; the others go on.
    ``progress=False`` hides the progress bar. The CSVs are written atomically
    (:mod:`hpa_kit.outputs`).

    Raises ``ValueError`` before anything is written for a bad ``n`` or ``seed``, or an
    ``id_prefix`` whose ids break the id rule of submissions
    (:func:`hpa_kit.submission.check_image_id`: quotes, ``..``, spaces...).
    """
    from hpa_kit.progress import progress_bar

    _check_dataset_args(n, seed, id_prefix)
    height, width = _size(size)
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)

    labels_rows: dict[str, str] = {}
    truths: dict[str, str] = {}
    failures: dict[str, str] = {}
    num_cells = 0
    for k in progress_bar(range(int(n)), enabled=progress, desc="synth", unit="image"):
        image_id = f"{id_prefix}_{k:05d}"
        try:
            synth = generate_image(size=(height, width), seed=(int(seed), k), config=config)
            truths[image_id] = _write_image(out, image_id, synth)
        except (OSError, ValueError) as exc:
            failures[image_id] = f"{type(exc).__name__}: {exc}"
            continue
        labels_rows[image_id] = synth.label_string
        num_cells += synth.num_cells
    train_csv, sample_path, truth_path = _write_tables(out, labels_rows, truths, (height, width))
    return SynthDataset(
        out=out,
        ids=tuple(labels_rows),
        train_csv=train_csv,
        sample_submission=sample_path,
        truth=truth_path,
        num_cells=num_cells,
        failures=failures,
    )


def _check_dataset_args(n: int, seed: int, id_prefix: str) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    from hpa_kit.submission import SubmissionError, check_image_id

    if not isinstance(id_prefix, str) or not id_prefix:
        raise ValueError(f"id_prefix must be a non-empty str, got {id_prefix!r}")
    try:  # the ids differ only in their digits: the first one stands for them all
        check_image_id(f"{id_prefix}_{0:05d}")
    except SubmissionError as exc:
        raise ValueError(f"id_prefix {id_prefix!r} cannot start an image id: {exc}") from None


def _write_image(out: Path, image_id: str, synth: SynthImage) -> str:
    """Write one image's channels and label images; returns its truth PredictionString."""
    from hpa_kit.io import write_channels, write_label_image

    if synth.num_cells == 0:
        raise ValueError("no cells were generated (cells too small for the image?)")
    write_channels(out / "images", image_id, synth.image)
    write_label_image(out / "masks" / f"{image_id}_cells.png", synth.cell_labels)
    write_label_image(out / "masks" / f"{image_id}_nuclei.png", synth.nuclei_labels)
    return _truth_string(synth)


def _write_tables(
    out: Path, labels: Mapping[str, str], truths: Mapping[str, str], shape: tuple[int, int]
) -> tuple[Path, Path, Path]:
    """``train.csv``, ``sample_submission.csv`` and ``truth.csv`` of the written images."""
    import pandas as pd

    from hpa_kit.outputs import atomic_write_text
    from hpa_kit.submission import placeholder_prediction_string, read_sample, write_submission

    height, width = shape
    ids = list(labels)
    train_csv = atomic_write_text(
        out / "train.csv",
        pd.DataFrame({"ID": ids, "Label": list(labels.values())}).to_csv(index=False),
    )
    placeholder = placeholder_prediction_string(height, width)
    sample = pd.DataFrame(
        {
            "ID": ids,
            "ImageWidth": [width] * len(ids),
            "ImageHeight": [height] * len(ids),
            "PredictionString": [placeholder] * len(ids),
        }
    )
    sample_path = atomic_write_text(out / "sample_submission.csv", sample.to_csv(index=False))
    truth_path = out / "truth.csv"
    write_submission(truth_path, truths, read_sample(sample_path))
    return train_csv, sample_path, truth_path


def class_counts(images: Sequence[SynthImage]) -> np.ndarray:
    """Cells per class over ``images`` (length-19 int array); a handy summary."""
    counts = np.zeros(NUM_CLASSES, dtype=np.int64)
    for synth in images:
        for classes in synth.cell_classes.values():
            counts[list(classes)] += 1
    return counts

"""Labelling constants: declared once in full-resolution pixels, derived for any scale."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

__all__ = [
    "ScaledSizes",
    "SegConfig",
    "reduced_shape",
    "scaled_area",
    "scaled_cut",
    "scaled_radius",
]

# Products such as 500 * 0.3**2 come out as 45.00000000000001 in floating point; rounding the
# product to this many decimals first keeps ceil() from stepping past an exact integer.
_DECIMALS = 9


def scaled_area(area: int, scale: float) -> int:
    """An area threshold in full-resolution pixels, expressed in pixels at ``scale``.

    Every area threshold of the labelling means "remove objects strictly smaller than N". At
    scale ``s`` an object of full-resolution area ``a`` covers about ``a * s**2`` pixels, and
    for an integer pixel count ``n`` the test ``n < N * s**2`` is exactly ``n < ceil(N * s**2)``:
    so ``ceil`` is the faithful translation. ``round`` differs whenever the fraction is below
    one half: for N=500 at s=0.25 it gives 31 and keeps a 31 px seed (~496 px at full
    resolution, which the full-resolution rule removes). At ``s = 1`` the threshold is ``N``.

    >>> scaled_area(500, 0.25), scaled_area(5500, 0.25), scaled_area(8, 0.25)
    (32, 344, 1)
    >>> scaled_area(2500, 1.0)
    2500
    """
    if area < 0 or scale <= 0:
        raise ValueError(f"need area >= 0 and scale > 0, got area={area}, scale={scale}")
    return math.ceil(round(area * scale * scale, _DECIMALS))


def scaled_radius(radius: int, scale: float) -> int:
    """A structuring-element radius in full-resolution pixels, expressed at ``scale``.

    Rounded up (``ceil``), with a floor of 1 when the full-resolution radius is positive: the
    closing only bridges gaps and smooths outlines, and a radius that rounds to 0 at small
    scales would silently switch it off (the failure reported for round() at very small
    scales). Over-closing by less than one reduced pixel changes the outline by at most
    ``1 / s`` full-resolution pixels. 6 px gives 2 at s=0.25 (1.5 up), 1 at s=0.125.

    >>> scaled_radius(6, 0.25), scaled_radius(6, 0.125), scaled_radius(6, 0.05), scaled_radius(6, 1.0)
    (2, 1, 1, 6)
    """
    if radius < 0 or scale <= 0:
        raise ValueError(f"need radius >= 0 and scale > 0, got radius={radius}, scale={scale}")
    if radius == 0:
        return 0
    return max(1, math.ceil(round(radius * scale, _DECIMALS)))


def scaled_cut(depth: int, scale: float) -> int:
    """Depth (0 or 1) of the hole-filling cut against the background at ``scale``.

    hpacellseg's per-label hole filling cuts one pixel off every edge a cell shares with the
    background (twice), a pure area bias. At reduced scale a one-pixel cut costs ``1 / s``
    full-resolution pixels, so it is rounded to the nearest pixel (half up) instead of up:
    kept at scales >= 0.5, dropped below (at 0.25 it would take 4 px per step, 8 in all,
    where full-scale labelling takes 2). Cuts between two touching cells always stay. The cut
    is one pixel deep or absent, so scales above 1 (an image whose pixel is smaller than a
    full-resolution pixel) keep it at ``depth``.

    >>> scaled_cut(1, 1.0), scaled_cut(1, 0.5), scaled_cut(1, 0.25), scaled_cut(0, 1.0)
    (1, 1, 0, 0)
    >>> scaled_cut(1, 2.0)
    1
    """
    if depth not in (0, 1) or scale <= 0:
        raise ValueError(f"need depth 0 or 1 and scale > 0, got depth={depth}, scale={scale}")
    return min(depth, int(math.floor(round(depth * scale, _DECIMALS) + 0.5)))


def reduced_shape(shape: tuple[int, int], scale: float) -> tuple[int, int]:
    """The (rows, cols) of a ``shape`` image resized by ``scale`` (half up, at least 1).

    Used by every map producer and by :func:`maps_to_labels`, so the sizes always agree.

    >>> reduced_shape((2048, 2048), 0.25), reduced_shape((1730, 3072), 0.25)
    ((512, 512), (433, 768))
    """
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    return tuple(max(1, int(math.floor(n * scale + 0.5))) for n in shape[:2])  # type: ignore[return-value]


def _check_pixel_size(pixel_size: float, name: str = "pixel_size") -> None:
    """Raise ValueError unless ``pixel_size`` is a finite real number > 0."""
    if (
        isinstance(pixel_size, bool)
        or not isinstance(pixel_size, (int, float))
        or not math.isfinite(pixel_size)
        or pixel_size <= 0
    ):
        raise ValueError(
            f"{name} (full-resolution pixels per image pixel) must be a finite number > 0, "
            f"got {pixel_size!r}"
        )


@dataclass(frozen=True)
class ScaledSizes:
    """The integer constants of :class:`SegConfig` at one scale (see :meth:`SegConfig.sizes`)."""

    min_seed_area: int
    max_hole_area: int
    min_mask_area: int
    min_nucleus_area: int
    min_cell_area: int
    closing_radius: int
    rim_cut: int
    exact_floods: bool


@dataclass(frozen=True)
class SegConfig:
    """Everything :func:`label_cells` needs, as hpacellseg's ``label_cell`` uses it.

    Sizes are in full-resolution pixels (of a 2048 px HPA image) and mean "objects strictly
    smaller than this are removed" (holes: "strictly smaller are filled"); :meth:`sizes` gives
    them at the :attr:`effective_scale` ``scale / pixel_size``: ``scale`` is the scale of the
    maps being labelled (0.25 = maps at a quarter of the image size, the project default; 1.0
    for maps at the image size) and ``pixel_size`` says how many full-resolution pixels one
    image pixel stands for (1 for a full-resolution image, 2 for a 1024 px cache of 2048 px
    images, 2048 / 384 for a 384 px synthetic image). Probabilities are fractions of 255 and
    every test is "strictly greater than".

    Attributes:
        scale: scale of the prediction maps relative to the image.
        pixel_size: full-resolution HPA pixels per image pixel (> 0; default 1.0).
        nuclei_threshold: nucleus mask = nuclei foreground > this.
        seed_threshold: nucleus seeds = nuclei foreground > this, outside borders.
        border_threshold: a pixel is outside borders when 1 - (nuclei border + cell border) > this.
        wrap_border_sum: add the two uint8 border channels in uint8 (wrapping modulo 256) as
            hpacellseg does (True, for parity), or without overflow (False).
        cell_threshold_floor, otsu_factor: cell region = cell foreground >
            max(floor, factor * otsu(cell foreground)).
        cell_border_threshold: the second cell watershed may also grow into cell border > this.
        min_seed_area, max_hole_area, min_mask_area, min_nucleus_area, min_cell_area: areas.
        closing_radius: radius of the disk of the grey closing of the cell labels.
        rim_cut: depth (0 or 1) of the cut the hole filling makes where a cell meets the
            background (hpacellseg: 1); dropped at effective scales below 0.5, i.e. where one
            map pixel stands for more than 2 full-resolution pixels (:func:`scaled_cut`).
        exact_floods: how the three watersheds (nuclei, with lines; the two cell floods)
            run. True: over the whole image, as hpacellseg's do, so pixels that two seeds
            reach at equal priority go where scikit-image's heap order sends them (pixel
            parity with hpacellseg at scale 1.0). False: over only the pixels left to flood
            and the labelled pixels next to them, in their bounding box; the same flooding
            rule and, apart from such equal-priority races (and the watershed lines they
            place), the same result, faster (the second cell watershed otherwise pushes
            every cell pixel through the heap to grow a few thousand border pixels, and the
            nuclei watershed every seed pixel to flood a few hundred). None (default): True
            at effective scales >= 0.5, False below, where no full-resolution result exists
            to be identical to. Figures: BENCHMARKS.md, segmentation.

    >>> SegConfig().sizes()
    ScaledSizes(min_seed_area=32, max_hole_area=63, min_mask_area=1, min_nucleus_area=157, min_cell_area=344, closing_radius=2, rim_cut=0, exact_floods=False)
    >>> SegConfig(scale=1.0, pixel_size=2.0).sizes()  # a 1024 px image of a 2048 px one
    ScaledSizes(min_seed_area=125, max_hole_area=250, min_mask_area=2, min_nucleus_area=625, min_cell_area=1375, closing_radius=3, rim_cut=1, exact_floods=True)
    """

    scale: float = 0.25
    nuclei_threshold: float = 0.4
    seed_threshold: float = 0.15
    border_threshold: float = 0.05
    wrap_border_sum: bool = True
    cell_threshold_floor: float = 0.22
    otsu_factor: float = 0.5
    cell_border_threshold: float = 0.05
    min_seed_area: int = 500
    max_hole_area: int = 1000
    min_mask_area: int = 8
    min_nucleus_area: int = 2500
    min_cell_area: int = 5500
    closing_radius: int = 6
    rim_cut: int = 1
    pixel_size: float = 1.0
    exact_floods: bool | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.scale, (int, float)) and 0 < self.scale <= 4):
            raise ValueError(f"SegConfig.scale must be in (0, 4], got {self.scale!r}")
        _check_pixel_size(self.pixel_size, "SegConfig.pixel_size")
        for name in ("min_seed_area", "max_hole_area", "min_mask_area", "min_nucleus_area",
                     "min_cell_area", "closing_radius"):  # fmt: skip
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"SegConfig.{name} must be an int >= 0, got {value!r}")
        if self.rim_cut not in (0, 1):
            raise ValueError(f"SegConfig.rim_cut must be 0 or 1, got {self.rim_cut!r}")
        if self.exact_floods is not None and not isinstance(self.exact_floods, bool):
            raise ValueError(
                f"SegConfig.exact_floods must be True, False or None, got {self.exact_floods!r}"
            )

    @property
    def effective_scale(self) -> float:
        """``scale / pixel_size``: map pixels per full-resolution pixel, the factor the
        full-resolution sizes are scaled by."""
        return self.scale / self.pixel_size

    def sizes(self, scale: float | None = None) -> ScaledSizes:
        """The integer sizes for maps at ``scale`` (default: ``self.scale``) of an image of
        ``self.pixel_size``: with ``s = scale / pixel_size``, areas x s^2 and radii x s, both
        rounded up (:func:`scaled_area`, :func:`scaled_radius`), the background cut of the
        hole filling rounded to nearest (:func:`scaled_cut`), and ``exact_floods`` resolved
        (None: ``s >= 0.5``)."""
        s = (self.scale if scale is None else scale) / self.pixel_size
        return ScaledSizes(
            min_seed_area=scaled_area(self.min_seed_area, s),
            max_hole_area=scaled_area(self.max_hole_area, s),
            min_mask_area=scaled_area(self.min_mask_area, s),
            min_nucleus_area=scaled_area(self.min_nucleus_area, s),
            min_cell_area=scaled_area(self.min_cell_area, s),
            closing_radius=scaled_radius(self.closing_radius, s),
            rim_cut=scaled_cut(self.rim_cut, s),
            exact_floods=(s >= 0.5) if self.exact_floods is None else self.exact_floods,
        )

    def at_scale(self, scale: float) -> SegConfig:
        """The same constants (and ``pixel_size``) for maps at another ``scale``."""
        return dataclasses.replace(self, scale=scale)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

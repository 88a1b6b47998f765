"""Segmenter objects: the shells that batch images through a map producer and the labelling.

A segmenter says itself where its parts run (:meth:`Segmenter.device_stage`): ``None`` when
the whole of it can run in a worker process (the classical segmenter: plain attributes,
picklable), or a :class:`DeviceStage` whose ``maps`` must run in the calling process (networks
on a GPU) and whose ``labels`` (picklable, no network inside) run in the workers. Batch jobs
(:func:`hpa_kit.predict.predict_folder`, ``hpa-kit segment``) ask :func:`device_stage`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from hpa_kit.segment._config import SegConfig, _check_pixel_size
from hpa_kit.segment._label import maps_to_labels

if TYPE_CHECKING:  # pragma: no cover
    from hpa_kit.segment.classical import ClassicalConfig

__all__ = [
    "ClassicalSegmenter",
    "DeviceStage",
    "NetworkSegmenter",
    "Segmenter",
    "device_stage",
    "make_segmenter",
    "segment",
]

Maps = tuple[np.ndarray, np.ndarray]
Labels = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class DeviceStage:
    """How a segmenter splits between the calling process and CPU workers.

    ``maps(images) -> [(nuclei_map, cell_map), ...]`` runs in the calling process (it holds
    the networks, on their device), at best on ``batch`` images per call;
    ``labels(nuclei_map, cell_map, shape) -> (nuclei_labels, cell_labels)`` is picklable and
    runs in worker processes.
    """

    maps: Callable[[Sequence[np.ndarray]], list[Maps]]
    labels: Callable[[np.ndarray, np.ndarray, tuple[int, int]], Labels]
    batch: int = 1


class Segmenter(Protocol):
    """What the batch jobs need from a segmenter.

    ``segment(images)``: full-resolution ``(nuclei_labels, cell_labels)`` per image;
    ``device_stage()``: ``None`` when the whole segmenter may run in a worker process, else
    the :class:`DeviceStage` that splits it (see the module docstring).
    """

    config: SegConfig

    def maps(self, images: Sequence[np.ndarray]) -> list[Maps]: ...

    def labels(
        self, nuclei_maps: np.ndarray, cell_maps: np.ndarray, shape: tuple[int, int]
    ) -> Labels: ...

    def segment(self, images: Sequence[np.ndarray]) -> list[Labels]: ...

    def device_stage(self) -> DeviceStage | None: ...


def device_stage(segmenter: Any) -> DeviceStage | None:
    """``segmenter.device_stage()``; ``None`` (all of it in the workers) for a segmenter
    without that method, such as a user's object that only has ``segment``."""
    method = getattr(segmenter, "device_stage", None)
    return None if method is None else method()


def _labels_with(
    config: SegConfig, nuclei_maps: np.ndarray, cell_maps: np.ndarray, shape: tuple[int, int]
) -> Labels:
    return maps_to_labels(nuclei_maps, cell_maps, shape=tuple(shape[:2]), config=config)


def _config_for(scale: float, config: SegConfig | None, pixel_size: float) -> SegConfig:
    _check_pixel_size(pixel_size)
    if config is None:
        return SegConfig(scale=scale, pixel_size=pixel_size)
    if config.scale != scale:
        raise ValueError(
            f"config.scale ({config.scale}) differs from the segmenter's scale ({scale}); "
            "the labelling constants must be derived for the scale of the maps"
        )
    if config.pixel_size != pixel_size:
        raise ValueError(
            f"config.pixel_size ({config.pixel_size}) differs from the segmenter's pixel_size "
            f"({pixel_size}); pass the same pixel_size to both"
        )
    return config


class _Base:
    config: SegConfig

    def labels(
        self, nuclei_maps: np.ndarray, cell_maps: np.ndarray, shape: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Full-resolution ``(nuclei_labels, cell_labels)`` (int32) for an image of ``shape``.

        Equals :func:`maps_to_labels` with this segmenter's config, which is all a worker
        process needs: send it ``segmenter.config`` rather than the segmenter when the
        segmenter holds networks.
        """
        return maps_to_labels(nuclei_maps, cell_maps, shape=tuple(shape[:2]), config=self.config)

    def maps(self, images: Sequence[np.ndarray]) -> list[Maps]:  # pragma: no cover - abstract
        raise NotImplementedError

    def device_stage(self) -> DeviceStage | None:
        """``None``: the whole segmenter can run in a worker process."""
        return None

    def segment(self, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(nuclei_labels, cell_labels)`` at full resolution for each RGBY image, in order."""
        images = list(images)
        return [
            self.labels(nuc, cell, image.shape[:2])
            for image, (nuc, cell) in zip(images, self.maps(images), strict=True)
        ]


class ClassicalSegmenter(_Base):
    """Weights-free segmentation: :func:`classical_maps` then :func:`label_cells`.

    Args:
        scale: scale of the maps (and the labelling) relative to the image.
        config: labelling constants (default ``SegConfig(scale=scale, pixel_size=pixel_size)``;
            its ``scale`` and ``pixel_size`` must match these).
        pixel_size: full-resolution HPA pixels per image pixel (> 0): 1 for 2048 px HPA
            images, 2 for a 1024 px cache of them, ``2048 / 384`` for a 384 px synthetic
            image. Every size of the maps and of the labelling (declared in full-resolution
            pixels) is scaled by ``scale / pixel_size``; with the default 1.0 a shrunk image's
            cells look too small and are removed.
        classical: constants of :func:`classical_maps` (default ``ClassicalConfig()``).

    Picklable (plain attributes), so it can be sent to worker processes.

    >>> ClassicalSegmenter(scale=0.25).config.scale
    0.25
    >>> seg = ClassicalSegmenter(1.0, pixel_size=2.0)
    >>> seg.config.sizes().min_cell_area  # 5500 / 2**2
    1375
    """

    def __init__(
        self,
        scale: float = 0.25,
        config: SegConfig | None = None,
        *,
        pixel_size: float = 1.0,
        classical: ClassicalConfig | None = None,
    ) -> None:
        from hpa_kit.segment.classical import ClassicalConfig

        self.scale = scale
        self.pixel_size = pixel_size
        self.config = _config_for(scale, config, pixel_size)
        self.classical = ClassicalConfig() if classical is None else classical
        if not isinstance(self.classical, ClassicalConfig):
            raise TypeError(
                f"classical must be a ClassicalConfig or None, got {type(classical).__name__}"
            )

    def maps(self, images: Sequence[np.ndarray]) -> list[Maps]:
        from hpa_kit.segment.classical import classical_maps

        return [
            classical_maps(
                image, scale=self.scale, config=self.classical, pixel_size=self.pixel_size
            )
            for image in images
        ]

    def __repr__(self) -> str:
        extra = "" if self.pixel_size == 1 else f", pixel_size={self.pixel_size}"
        return f"ClassicalSegmenter(scale={self.scale}{extra})"


class NetworkSegmenter(_Base):
    """hpacellseg's networks (:func:`predict_maps`) then :func:`label_cells`.

    ``nuclei_model`` / ``cell_model`` are modules as :func:`load_segmentation_models` returns
    them; ``two_channel`` selects the 2-channel cell model's input (zeros instead of yellow).
    ``pixel_size`` (full-resolution HPA pixels per image pixel, > 0) scales the labelling
    sizes by ``scale / pixel_size`` (:class:`SegConfig`). The networks were trained on maps at
    a quarter of a 2048 px image, so for a 1024 px cache (``pixel_size=2``) pass
    ``scale=0.5`` as well to show them the same resolution.
    """

    def __init__(
        self,
        nuclei_model: Any,
        cell_model: Any,
        *,
        scale: float = 0.25,
        batch_size: int = 4,
        device: str = "cpu",
        two_channel: bool = False,
        config: SegConfig | None = None,
        pixel_size: float = 1.0,
    ) -> None:
        self.nuclei_model = nuclei_model
        self.cell_model = cell_model
        self.scale = scale
        self.batch_size = batch_size
        self.device = device
        self.two_channel = two_channel
        self.pixel_size = pixel_size
        self.config = _config_for(scale, config, pixel_size)

    @classmethod
    def from_dir(
        cls,
        weights_dir: str | os.PathLike,
        device: str = "cpu",
        *,
        scale: float = 0.25,
        batch_size: int = 4,
        pixel_size: float = 1.0,
    ) -> NetworkSegmenter:
        """Load hpacellseg's weight files from ``weights_dir``: ``dpn_unet_nuclei_v1.pth`` and
        ``dpn_unet_cell_3ch_v1.pth`` (preferred) or the 2-channel ``dpn_unet_cell_v2.pth``."""
        from hpa_kit.segment.networks import WEIGHT_FILES, load_segmentation_models

        folder = Path(weights_dir)
        nuclei_path = folder / WEIGHT_FILES["nuclei"]
        cell_path = folder / WEIGHT_FILES["cell"]
        two_channel = False
        if not cell_path.is_file() and (folder / WEIGHT_FILES["cell_2ch"]).is_file():
            cell_path, two_channel = folder / WEIGHT_FILES["cell_2ch"], True
        missing = [p.name for p in (nuclei_path, cell_path) if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"{folder} lacks {', '.join(missing)} (expected {WEIGHT_FILES['nuclei']} and "
                f"{WEIGHT_FILES['cell']} or {WEIGHT_FILES['cell_2ch']})"
            )
        _check_pixel_size(pixel_size)
        nuclei_model, cell_model = load_segmentation_models(nuclei_path, cell_path, device)
        return cls(
            nuclei_model,
            cell_model,
            scale=scale,
            batch_size=batch_size,
            device=device,
            two_channel=two_channel,
            pixel_size=pixel_size,
        )

    def device_stage(self) -> DeviceStage:
        """The networks' maps in the calling process; the labelling (config only) in workers."""
        labels = functools.partial(_labels_with, self.config)
        return DeviceStage(maps=self.maps, labels=labels, batch=self.batch_size)

    def maps(self, images: Sequence[np.ndarray]) -> list[Maps]:
        from hpa_kit.segment.networks import predict_maps

        return predict_maps(
            list(images),
            self.nuclei_model,
            self.cell_model,
            scale=self.scale,
            batch_size=self.batch_size,
            device=self.device,
            two_channel=self.two_channel,
        )

    def __repr__(self) -> str:
        return (
            f"NetworkSegmenter(scale={self.scale}, batch_size={self.batch_size}, "
            f"device={self.device!r}, two_channel={self.two_channel}"
            + ("" if self.pixel_size == 1 else f", pixel_size={self.pixel_size}")
            + ")"
        )


def make_segmenter(
    weights_dir: str | os.PathLike | None = None,
    *,
    device: str = "cpu",
    scale: float = 0.25,
    pixel_size: float = 1.0,
    batch_size: int = 4,
) -> ClassicalSegmenter | NetworkSegmenter:
    """hpacellseg's networks from the weight files in ``weights_dir`` (on ``device``,
    ``batch_size`` images per network call), or the weights-free :class:`ClassicalSegmenter`
    when it is ``None``.

    The one place the command line turns its segmentation options into a segmenter: bad sizes
    (:class:`SegConfig`'s checks) and missing or unreadable weight files raise
    :class:`hpa_kit.errors.UsageError` naming the values and the cause.

    >>> make_segmenter(scale=0.5)
    ClassicalSegmenter(scale=0.5)
    >>> make_segmenter(scale=7.0)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    hpa_kit.errors.UsageError: bad segmenter option (scale 7.0, pixel size 1.0): ...
    """
    from hpa_kit.errors import UsageError, describe

    try:
        if weights_dir is None:
            return ClassicalSegmenter(scale=scale, pixel_size=pixel_size)
        return NetworkSegmenter.from_dir(
            weights_dir, device, scale=scale, batch_size=batch_size, pixel_size=pixel_size
        )
    except UsageError:
        raise
    except ValueError as exc:  # SegConfig's checks
        given = f"scale {scale}, pixel size {pixel_size}"
        raise UsageError(f"bad segmenter option ({given}): {describe(exc)}") from exc
    except (OSError, ImportError) as exc:
        raise UsageError(
            f"cannot load the segmentation networks from {weights_dir}: {describe(exc)}"
        ) from exc


def segment(
    images: Sequence[np.ndarray],
    *,
    segmenter: Segmenter | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Full-resolution ``(nuclei_labels, cell_labels)`` for each RGBY image, in order.

    ``segmenter`` defaults to ``ClassicalSegmenter()`` (scale 0.25). Images go through
    ``segmenter.maps`` ``batch_size`` at a time; each label image has its image's exact size.
    """
    if segmenter is None:
        segmenter = ClassicalSegmenter()
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    images = list(images)
    starts = range(0, len(images), batch_size)
    if progress:
        from hpa_kit.progress import progress_bar

        starts = progress_bar(starts, desc="segment", unit="batch")
    results: list[tuple[np.ndarray, np.ndarray]] = []
    for start in starts:
        results.extend(segmenter.segment(images[start : start + batch_size]))
    return results

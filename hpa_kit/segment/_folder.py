"""Segment a folder of images into label PNGs: ``hpa-kit segment`` without the command line.

:func:`segment_folder` finds the ids of ``images_dir`` from *any* of their channel files
(:func:`hpa_kit.prepare.find_sources`), so an id that lacks a channel is reported with the
channel's name instead of being skipped, and writes ``out/{id}_cells.png`` (and
``{id}_nuclei.png``): 16-bit label images, 0 = background, 1..N = cells, at the image's size.
The work goes through :func:`hpa_kit.runner.run_jobs`: with ``workers`` processes, a
segmenter that runs whole in a worker (the classical one) reads, segments and writes there;
one with a device stage (:func:`hpa_kit.segment.device_stage`, the networks) reads in the
workers, runs its maps here in batches, and labels and writes in the workers. A failing id is
recorded with its cause in the returned :class:`hpa_kit.batch.BatchReport`; the others go on.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np

from hpa_kit.batch import BatchReport

__all__ = ["segment_folder"]


def _read(images_dir: str, ext: str, image_id: str, _: Any) -> np.ndarray:
    from hpa_kit.io import read_image

    return read_image(images_dir, image_id, ext=ext)


def _write(out: str, nuclei: bool, image_id: str, labels: tuple[np.ndarray, np.ndarray]) -> None:
    from hpa_kit.io import write_label_image

    nuclei_labels, cell_labels = labels
    write_label_image(Path(out) / f"{image_id}_cells.png", cell_labels)
    if nuclei:
        write_label_image(Path(out) / f"{image_id}_nuclei.png", nuclei_labels)


def _whole(
    images_dir: str, ext: str, segmenter: Any, out: str, nuclei: bool, image_id: str, _: Any
):
    """Worker: read, segment, write."""
    image = _read(images_dir, ext, image_id, None)
    _write(out, nuclei, image_id, segmenter.segment([image])[0])


def _maps(maps_fn: Any, ids: list[str], images: list[np.ndarray]) -> list[tuple]:
    """Main thread: the device stage on a batch; only shapes and maps go back to the workers."""
    return [(image.shape[:2], maps) for image, maps in zip(images, maps_fn(images), strict=True)]


def _label_and_write(labels_fn: Any, out: str, nuclei: bool, image_id: str, value: tuple) -> None:
    shape, (nuclei_map, cell_map) = value
    _write(out, nuclei, image_id, labels_fn(nuclei_map, cell_map, shape))


def _stages(segmenter: Any, images_dir: str, ext: str, out: str, nuclei: bool) -> list:
    from hpa_kit.runner import Stage
    from hpa_kit.segment._segmenter import device_stage

    split = device_stage(segmenter)
    if split is None:
        return [Stage(functools.partial(_whole, images_dir, ext, segmenter, out, nuclei))]
    return [
        Stage(functools.partial(_read, images_dir, ext)),
        Stage(functools.partial(_maps, split.maps), where="main", batch=split.batch),
        Stage(functools.partial(_label_and_write, split.labels, out, nuclei)),
    ]


def segment_folder(
    images_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    segmenter: Any = None,
    nuclei: bool = False,
    ext: str = ".png",
    workers: int = 0,
    progress: bool = True,
) -> BatchReport:
    """Label images for every id of ``images_dir`` in ``out`` (see the module docstring).

    ``segmenter`` defaults to ``ClassicalSegmenter()``; ``ext`` is the channel files'
    extension; ``workers`` processes (0: in this thread). Raises
    :class:`hpa_kit.errors.UsageError` before any work when ``images_dir`` is not a folder or
    holds no channel file, or ``out`` cannot be written.
    """
    from hpa_kit.errors import UsageError
    from hpa_kit.io import CHANNELS
    from hpa_kit.outputs import check_writable_folder
    from hpa_kit.prepare import find_sources
    from hpa_kit.runner import RunnerOptions, run_jobs

    options = RunnerOptions(workers=workers, progress=progress, desc="segment", unit="image")
    if segmenter is None:
        from hpa_kit.segment._segmenter import ClassicalSegmenter

        segmenter = ClassicalSegmenter()
    ext = ext if ext.startswith(".") else "." + ext
    images_dir, out = Path(images_dir).resolve(), Path(out)
    sources, problems = find_sources(images_dir, channels=CHANNELS, extensions=(ext,))
    if not sources and not problems:
        raise UsageError(f"no images ({{id}}_{{{','.join(CHANNELS)}}}{ext}) in {images_dir}")
    out.mkdir(parents=True, exist_ok=True)
    check_writable_folder(out, what="--out")
    report = BatchReport()
    for image_id, cause in problems.items():
        report.add_failure(image_id, cause)
    stages = _stages(segmenter, str(images_dir), ext, str(out.resolve()), nuclei)
    for result in run_jobs(sorted(sources), stages, options):
        report.add_result(result.id, result.error)
    return report

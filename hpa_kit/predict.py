"""The end-to-end predictor: images in, per-cell class probabilities and ``submission.csv`` out.

Per image (:func:`predict_image` is the pure part, arrays in, arrays out):

1. read the four channels (RGBY, :func:`hpa_kit.io.read_image`);
2. segment cells (a :class:`hpa_kit.segment.NetworkSegmenter` or, by default, the
   :class:`hpa_kit.segment.ClassicalSegmenter`) into a full-resolution int32 label image;
3. crop every cell (:func:`hpa_kit.crop.crop_cells`: bounding square + ``margin``, other cells
   and background zeroed when ``mask_others``), once per distinct classifier input size;
4. classify the crops in batches of ``batch_size`` with each checkpoint of the ensemble, each
   with its own channels, input size and normalisation from its ``config.json``, averaging the
   sigmoid probabilities over the TTA views (:mod:`hpa_kit.tta`) and then over checkpoints;
5. optionally blend with the same ensemble's prediction on the whole image, resized to the
   checkpoint's input size::

       p_cell' = (1 - w) * p_cell + w * p_image          (w = image_weight, default 0)

6. emit a triplet for every (cell, class) whose probability is ``>= floor`` (default 0: all 19
   classes of every cell), masks encoded by :func:`hpa_kit.rle.encode_label_image`.

An image in which no cell is found gets the placeholder row (``0 1 <empty mask>``, which the
metric ignores) and is listed in ``PredictReport.no_cells``.

Over a folder, :func:`predict_folder` is a short loop over :func:`hpa_kit.runner.run_jobs`:
worker processes (``num_workers``; 0 works in the calling thread) read each image, segment it
and crop it and encode its masks, at most ``prefetch`` images ahead, while this thread
classifies. The segmenter says which of its parts runs here on the device
(:func:`hpa_kit.segment.device_stage`: the network segmenter's maps) and which in the workers
(the labelling). The runner's rules apply: a failing image is recorded with its cause and gets
a placeholder row; a worker process that dies fails only the image it was working on; workers
end with this process, even when it is killed.

Before any work it checks (:func:`check_inputs`; :class:`hpa_kit.errors.UsageError`, nothing
written): the images folder holds at least one id of the sample; ``out`` is a writable file path with room for the
estimated CSV (:func:`estimate_csv_bytes`), and an existing ``out`` is a submission CSV
(never another file); ``out``, ``resume`` and the sample are three different files; the
resume file is this run's (below; checked once the checkpoints are loaded).

The *resume file* (:class:`hpa_kit.outputs.ResumeLog`, JSON lines, each flushed and fsynced)
starts with a header naming its format and this run: a digest of the sample's ids and sizes,
of the checkpoints (weights and configs), the segmenter and the options that change the
predictions. A restarted run with the same header skips the ids already there (a line cut by
a kill is dropped; a record whose image size differs from the sample's is never reused), so
the final CSV equals an uninterrupted run's. A file without that header, or with another
run's, is refused (:class:`ResumeMismatchError`, exit 2) and left untouched. Failed images are
retried by a restarted run.

At the end the CSV is written (:func:`hpa_kit.submission.write_submission`, one row per sample
id); then, if every attempted image failed or more than ``max_failures`` did,
:class:`TooManyFailuresError` (a :class:`hpa_kit.errors.RunError`, exit 1) is raised, carrying
the report: a submission made of placeholders must not look like a success.

Threads: this process classifies with ``threads`` torch threads (default: the cores left by the
workers, at least 1); each worker process uses one thread (OpenMP, OpenCV, torch), so the two
do not fight over the cores.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hpa_kit.batch import BatchReport, allowed_failures
from hpa_kit.errors import RunError, UsageError, describe
from hpa_kit.io import CHANNELS
from hpa_kit.outputs import ResumeMismatchError
from hpa_kit.runner import EXECUTORS, MAX_WORKERS, check_number

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import torch

    from hpa_kit.model import ClassifierConfig
    from hpa_kit.outputs import ResumeLog
    from hpa_kit.runner import JobResult, Stage

__all__ = [
    "RESUME_FORMAT",
    "RESUME_VERSION",
    "PredictOptions",
    "PredictReport",
    "ResumeMismatchError",
    "TooManyFailuresError",
    "blend_probs",
    "check_inputs",
    "classify_crops",
    "estimate_csv_bytes",
    "load_ensemble",
    "padded_batch",
    "predict_folder",
    "predict_image",
    "read_resume",
    "resolve_device",
]

RESUME_FORMAT = "hpa_kit.predict"
RESUME_VERSION = 2
MAX_MARGIN = 2.0  # a crop 5x the cell's side; more only costs memory


@dataclass(frozen=True)
class PredictOptions:
    """How :func:`predict_image` and :func:`predict_folder` work.

    - ``tta``: ``"none"``, ``"seed"`` (identity, flips, x0.8, x1.2) or ``"d4"`` (8 flips/rotations);
    - ``batch_size``: crops per forward pass (per TTA view);
    - ``margin`` (0 to 2), ``mask_others``: crop rules (:func:`hpa_kit.crop.crop_cells`);
    - ``image_weight``: ``w`` in ``p' = (1 - w) p_cell + w p_image`` (0 = cells only);
    - ``floor``: emit (cell, class) triplets with probability ``>= floor`` (0 = all classes);
    - ``num_workers``: CPU worker processes (or threads) for read/segment/crop/encode, 0 = none;
    - ``prefetch``: images prepared ahead of the classifier (bounds memory);
    - ``executor``: ``"process"`` (spawned processes; needs a picklable segmenter) or ``"thread"``;
    - ``device``: ``"cuda"``, ``"cpu"``, ... ; ``None`` = CUDA when available, else CPU
      (:func:`resolve_device`, the one place that chooses);
    - ``amp``: float16 autocast for the classifiers on CUDA (ignored on CPU);
    - ``max_images``: stop after this many images in this run (the rest stay unattempted);
    - ``max_failures``: failed images allowed before :func:`predict_folder` raises
      :class:`TooManyFailuresError` (after writing the CSV): below 1 a fraction of the sample's
      ids (default 0.05), from 1 a count (a whole number); a run in which every attempted image
      failed always raises;
    - ``threads``: torch threads for classifying in this process; ``None`` = the cores not
      taken by the workers, at least 1 (:meth:`classify_threads`);
    - ``progress``: show a progress bar (images/s and ETA).
    """

    tta: str = "seed"
    batch_size: int = 32
    margin: float = 0.1
    mask_others: bool = True
    image_weight: float = 0.0
    floor: float = 0.0
    num_workers: int = 2
    prefetch: int = 4
    executor: str = "process"
    device: str | None = None
    amp: bool = True
    max_images: int | None = None
    max_failures: float = 0.05
    threads: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        from hpa_kit.tta import resolve_tta

        resolve_tta(self.tta)
        check_number("batch_size", self.batch_size, low=1, integer=True)
        check_number("margin", self.margin, low=0, high=MAX_MARGIN)
        check_number("image_weight", self.image_weight, low=0, high=1)
        check_number("floor", self.floor, low=0, high=1)
        check_number("num_workers", self.num_workers, low=0, high=MAX_WORKERS, integer=True)
        check_number("prefetch", self.prefetch, low=1, integer=True)
        if self.executor not in EXECUTORS:
            raise UsageError(f"executor must be one of {EXECUTORS}, got {self.executor!r}")
        if self.max_images is not None:
            check_number("max_images", self.max_images, low=0, integer=True)
        allowed_failures(self.max_failures, 0)  # checks it
        if self.threads is not None:
            check_number("threads", self.threads, low=1, high=1024, integer=True)

    def replace(self, **changes: Any) -> PredictOptions:
        return dataclasses.replace(self, **changes)

    def classify_threads(self, cores: int | None = None) -> int:
        """Torch threads for classifying: ``threads``, else ``cores - num_workers`` (cores
        this process may use), at least 1.

        >>> PredictOptions(num_workers=2).classify_threads(cores=8)
        6
        >>> PredictOptions(num_workers=2).classify_threads(cores=2)
        1
        >>> PredictOptions(threads=3).classify_threads(cores=2)
        3
        """
        if self.threads is not None:
            return self.threads
        from hpa_kit.runner import cpu_cores

        return max(1, (cpu_cores() if cores is None else cores) - self.num_workers)


class TooManyFailuresError(RunError):
    """Every attempted image failed, or more than ``max_failures`` did (exit 1).

    Raised by :func:`predict_folder` after the CSV is written (placeholder rows for the
    failed ids); ``report`` is the :class:`PredictReport`.
    """

    def __init__(self, message: str, report: PredictReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class PredictReport:
    """What :func:`predict_folder` did.

    ``total`` sample ids; ``predicted`` of them have a real prediction in the CSV (this run or
    resumed); ``resumed`` came from the resume file; ``processed`` were attempted in this run;
    ``batch`` is the run's :class:`hpa_kit.batch.BatchReport` (done and failed ids of this
    run, resumed and not attempted ids as skipped) and ``failures`` its id -> cause
    (placeholder rows); ``no_cells`` had no cell (placeholder rows); ``not_attempted`` were
    left by ``max_images`` (placeholder rows); ``cells`` were classified in this run;
    ``timings`` sums seconds per stage (worker stages summed over workers, so they can exceed
    ``seconds``); ``allowed_failures`` is what ``max_failures`` allowed; ``write_report`` is
    the :func:`hpa_kit.submission.write_submission` report.
    """

    out: Path
    total: int
    predicted: int
    resumed: int
    processed: int
    batch: BatchReport
    no_cells: tuple[str, ...]
    not_attempted: tuple[str, ...]
    cells: int
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)
    resume: Path | None = None
    write_report: Any = None
    allowed_failures: int = 0

    @property
    def failures(self) -> dict[str, str]:
        return dict(self.batch.failed)

    @property
    def complete(self) -> bool:
        """Every sample id was attempted (failures allowed)."""
        return not self.not_attempted

    @property
    def too_many_failures(self) -> bool:
        """Every attempted image failed, or more than ``allowed_failures``."""
        failed = len(self.batch.failed)
        return failed > self.allowed_failures or (failed > 0 and self.predicted == 0)

    @property
    def images_per_s(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        lines = [
            f"wrote {self.out}: {self.total} rows, {self.predicted} predicted "
            f"({self.resumed} resumed, {self.processed} processed in this run, {self.cells} cells, "
            f"{self.seconds:.1f} s, {self.images_per_s:.2f} images/s)",
        ]
        if self.timings:
            parts = ", ".join(f"{k} {v:.1f} s" for k, v in self.timings.items())
            lines.append(f"stage seconds: {parts}")
        if self.no_cells:
            lines.append(
                f"{len(self.no_cells)} image(s) without cells (placeholder rows): "
                + ", ".join(self.no_cells)
            )
        if self.failures:
            lines.append(f"{len(self.failures)} failure(s) (placeholder rows):")
            lines.extend(f"  {image_id}: {cause}" for image_id, cause in self.failures.items())
        if self.not_attempted:
            lines.append(
                f"stopped early: {len(self.not_attempted)} id(s) not attempted (placeholder rows); "
                "run again with the same resume file to finish"
            )
        return "\n".join(lines)


# --------------------------------------------------------------------------- classifiers


def load_ensemble(
    paths: Iterable[str | os.PathLike], device: str | torch.device = "cpu"
) -> list[tuple[torch.nn.Module, ClassifierConfig]]:
    """Load checkpoint directories (:func:`hpa_kit.model.load_classifier`) onto ``device``.

    All must predict the same classes in the same order; channels must be among RGBY. A folder
    that is not a checkpoint raises :class:`hpa_kit.model.CheckpointError`, an ensemble that does
    not agree a :class:`hpa_kit.errors.UsageError`.
    """
    from hpa_kit.model import load_classifier

    out = []
    for path in paths:
        model, config = load_classifier(path, device=device)
        if out and config.class_names != out[0][1].class_names:
            raise UsageError(
                f"checkpoint {path} predicts {config.num_classes} classes {config.class_names[:3]}..., "
                f"unlike the first checkpoint ({out[0][1].num_classes} classes); an ensemble must agree"
            )
        out.append((model, config))
    if not out:
        raise UsageError("no checkpoints given")
    return out


def _device_of(model: torch.nn.Module) -> torch.device:
    import torch

    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def classify_crops(
    crops: np.ndarray,
    model: torch.nn.Module,
    config: ClassifierConfig,
    *,
    tta: str = "seed",
    batch_size: int = 32,
    amp: bool = True,
    pad_batches: bool | None = None,
) -> np.ndarray:
    """Probabilities ``(N, K)`` float32 of one classifier on RGBY uint8 crops ``(N, S, S, 4)``.

    Takes the checkpoint's channels from the RGBY planes, normalises ``(x / 255 - mean) / std``
    and runs :func:`hpa_kit.tta.tta_predict` (padding value = a black raw pixel) on the model's
    device, ``batch_size`` crops at a time. ``S`` should be ``config.input_size``.

    ``pad_batches`` (default: on CUDA only) fills each batch with black crops up to the next
    power of two (at most ``batch_size``) and drops their rows: images have any number of
    cells, and every new batch shape costs the GPU libraries a warm-up, so a test set would
    otherwise pay it for each cell count. Eval-mode models treat rows independently, so the
    padding does not change the other rows' results (beyond float rounding of the kernels).
    """
    import torch

    from hpa_kit.tta import tta_predict

    crops = np.asarray(crops)
    if crops.ndim != 4 or crops.shape[-1] != len(CHANNELS) or crops.dtype != np.uint8:
        raise ValueError(f"crops must be (N, S, S, 4) RGBY uint8, got {crops.shape} {crops.dtype}")
    device = _device_of(model)
    index = [CHANNELS.index(c) for c in config.channels]
    mean = torch.tensor(config.mean, dtype=torch.float32, device=device).reshape(1, -1, 1, 1)
    std = torch.tensor(config.std, dtype=torch.float32, device=device).reshape(1, -1, 1, 1)
    fill = [-m / s for m, s in zip(config.mean, config.std, strict=True)]
    use_amp = amp and device.type == "cuda"
    pad = device.type == "cuda" if pad_batches is None else pad_batches
    out = np.zeros((crops.shape[0], config.num_classes), dtype=np.float32)
    for start in range(0, crops.shape[0], batch_size):
        chunk = np.ascontiguousarray(crops[start : start + batch_size][..., index])
        n = chunk.shape[0]
        if pad and n < (rows := padded_batch(n, batch_size)):
            chunk = np.concatenate([chunk, np.zeros((rows - n, *chunk.shape[1:]), chunk.dtype)])
        x = torch.from_numpy(chunk).to(device, non_blocking=True).permute(0, 3, 1, 2).float()
        x = (x / 255.0 - mean) / std
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            probs = tta_predict(model, x, tta=tta, fill=fill)
        out[start : start + n] = probs[:n].float().cpu().numpy()
    return out


def padded_batch(n: int, batch_size: int) -> int:
    """The batch size ``n`` crops are padded to: the next power of two, at most
    ``batch_size`` (and at least ``n``).

    >>> [padded_batch(n, 32) for n in (1, 2, 3, 5, 16, 17, 32)], padded_batch(20, 24)
    ([1, 2, 4, 8, 16, 32, 32], 24)
    """
    if n < 1 or batch_size < 1:
        raise ValueError(f"need n >= 1 and batch_size >= 1, got n={n}, batch_size={batch_size}")
    return max(n, min(1 << (n - 1).bit_length(), batch_size))


def blend_probs(cell_probs: np.ndarray, image_probs: np.ndarray, weight: float) -> np.ndarray:
    """``(1 - weight) * cell_probs + weight * image_probs`` (image row broadcast to every cell).

    >>> blend_probs(np.array([[0.2, 1.0]]), np.array([0.6, 0.0]), 0.25).tolist()
    [[0.30000000000000004, 0.75]]
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    if weight == 0.0:
        return np.asarray(cell_probs)
    return (1.0 - weight) * np.asarray(cell_probs) + weight * np.asarray(image_probs)[None, :]


# --------------------------------------------------------------------------- one image


@dataclass
class _Prepared:
    """An image made ready for the classifiers (built in a worker, consumed by the main thread)."""

    image_id: str
    shape: tuple[int, int]
    cell_ids: np.ndarray
    crops: dict[int, np.ndarray]  # input size -> (N, S, S, 4) uint8 RGBY
    whole: dict[int, np.ndarray]  # input size -> (S, S, 4) uint8 (image blend only)
    masks: dict[int, str]
    seconds: dict[str, float]


def _prepare(
    image_id: str,
    image: np.ndarray,
    cell_labels: np.ndarray,
    sizes: Sequence[int],
    *,
    margin: float,
    mask_others: bool,
    whole: bool,
    encode: bool,
    seconds: dict[str, float],
) -> _Prepared:
    from hpa_kit.crop import crop_cells
    from hpa_kit.io import resize_area

    t0 = time.perf_counter()
    crops: dict[int, np.ndarray] = {}
    cell_ids = np.zeros(0, dtype=np.int32)
    for size in sizes:
        result = crop_cells(image, cell_labels, size=size, margin=margin, mask_others=mask_others)
        crops[size] = result.crops
        cell_ids = result.cell_ids
    wholes = {size: resize_area(image, size) for size in sizes} if whole else {}
    t1 = time.perf_counter()
    seconds["crop"] = seconds.get("crop", 0.0) + t1 - t0
    masks: dict[int, str] = {}
    if encode:
        from hpa_kit.rle import encode_label_image

        masks = encode_label_image(cell_labels)
        seconds["encode"] = seconds.get("encode", 0.0) + time.perf_counter() - t1
    return _Prepared(image_id, tuple(image.shape[:2]), cell_ids, crops, wholes, masks, seconds)


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != len(CHANNELS) or image.dtype != np.uint8:
        raise ValueError(f"image must be H x W x 4 RGBY uint8, got {image.shape} {image.dtype}")
    return image


def _classify(
    prepared: _Prepared,
    classifiers: Sequence[tuple[torch.nn.Module, ClassifierConfig]],
    options: PredictOptions,
) -> np.ndarray:
    num_classes = classifiers[0][1].num_classes
    if not prepared.cell_ids.size:
        return np.zeros((0, num_classes), dtype=np.float32)
    cell_probs = []
    image_probs = []
    for model, config in classifiers:
        kwargs = {"tta": options.tta, "batch_size": options.batch_size, "amp": options.amp}
        cell_probs.append(
            classify_crops(prepared.crops[config.input_size], model, config, **kwargs)
        )
        if options.image_weight > 0:
            whole = prepared.whole[config.input_size][None]
            image_probs.append(classify_crops(whole, model, config, **kwargs)[0])
    probs = np.mean(cell_probs, axis=0)
    if options.image_weight > 0:
        probs = blend_probs(probs, np.mean(image_probs, axis=0), options.image_weight)
    return probs.astype(np.float32)


def predict_image(
    image: np.ndarray,
    cell_labels: np.ndarray,
    classifiers: Sequence[tuple[torch.nn.Module, ClassifierConfig]],
    *,
    options: PredictOptions = PredictOptions(),
) -> tuple[np.ndarray, np.ndarray]:
    """``(cell_ids (N,) int32, probs (N, K) float32)`` for one RGBY ``H x W x 4`` uint8 image and
    its int32 cell label image, with the ensemble ``classifiers`` (``[(model, config), ...]``
    from :func:`load_ensemble`), TTA and image blend as ``options`` say (device and workers
    are ignored: the models are used where they are)."""
    image = _check_image(image)
    if not classifiers:
        raise ValueError("no classifiers given")
    sizes = sorted({config.input_size for _, config in classifiers})
    prepared = _prepare(
        "",
        image,
        np.asarray(cell_labels),
        sizes,
        margin=options.margin,
        mask_others=options.mask_others,
        whole=options.image_weight > 0,
        encode=False,
        seconds={},
    )
    return prepared.cell_ids, _classify(prepared, classifiers, options)


# --------------------------------------------------------------------------- worker stages


def _read_checked(
    images_dir: str, image_id: str, shape: tuple[int, int], seconds: dict[str, float]
) -> np.ndarray:
    from hpa_kit.io import read_image

    t0 = time.perf_counter()
    image = read_image(images_dir, image_id, channels=CHANNELS)
    seconds["read"] = seconds.get("read", 0.0) + time.perf_counter() - t0
    if image.shape[:2] != tuple(shape):
        raise ValueError(
            f"image {image_id!r} is {image.shape[0]}x{image.shape[1]} (height x width) but the "
            f"sample says {shape[0]}x{shape[1]}"
        )
    return image


def _job_full(
    images_dir: str,
    segmenter: Any,
    sizes: Sequence[int],
    crop: dict,
    image_id: str,
    shape: tuple[int, int],
) -> _Prepared:
    """Worker: read, segment (the whole segmenter), crop, encode."""
    seconds: dict[str, float] = {}
    image = _read_checked(images_dir, image_id, shape, seconds)
    t0 = time.perf_counter()
    _, cell_labels = segmenter.segment([image])[0]
    seconds["segment"] = time.perf_counter() - t0
    return _prepare(image_id, image, cell_labels, sizes, encode=True, seconds=seconds, **crop)


def _job_read(
    images_dir: str, image_id: str, shape: tuple[int, int]
) -> tuple[np.ndarray, dict[str, float]]:
    """Worker: read only (the segmenter's device stage runs next, in the main thread)."""
    seconds: dict[str, float] = {}
    return _read_checked(images_dir, image_id, shape, seconds), seconds


def _device_maps(maps_fn: Any, ids: Sequence[str], values: Sequence[tuple]) -> list[tuple]:
    """Main thread: the segmenter's maps on the device for images read by the workers."""
    t0 = time.perf_counter()
    maps = maps_fn([image for image, _ in values])
    share = (time.perf_counter() - t0) / len(values)
    out = []
    for (image, seconds), image_maps in zip(values, maps, strict=True):
        seconds["segment_device"] = seconds.get("segment_device", 0.0) + share
        out.append((image, image_maps, seconds))
    return out


def _job_post(
    labels_fn: Any, sizes: Sequence[int], crop: dict, image_id: str, value: tuple
) -> _Prepared:
    """Worker: maps -> labels (the segmenter's CPU part), crop, encode."""
    image, maps, seconds = value
    t0 = time.perf_counter()
    _, cell_labels = labels_fn(maps[0], maps[1], image.shape[:2])
    seconds["segment"] = seconds.get("segment", 0.0) + time.perf_counter() - t0
    return _prepare(image_id, image, cell_labels, sizes, encode=True, seconds=seconds, **crop)


def _stages(segmenter: Any, images_dir: str, sizes: Sequence[int], crop: dict) -> list[Stage]:
    """The job per image; the segmenter says what must run here (:func:`device_stage`)."""
    from hpa_kit.runner import Stage
    from hpa_kit.segment import device_stage

    split = device_stage(segmenter)
    if split is None:
        return [Stage(functools.partial(_job_full, images_dir, segmenter, sizes, crop))]
    return [
        Stage(functools.partial(_job_read, images_dir)),
        Stage(functools.partial(_device_maps, split.maps), where="main"),
        Stage(functools.partial(_job_post, split.labels, sizes, crop)),
    ]


# --------------------------------------------------------------------------- resume file


def _fingerprint(
    classifiers: Sequence[tuple[torch.nn.Module, ClassifierConfig]],
    segmenter: Any,
    options: PredictOptions,
) -> str:
    """A digest of everything that changes the predictions: weights, configs, segmenter, options."""
    digest = hashlib.sha256()
    for model, config in classifiers:
        digest.update(json.dumps(config.to_dict(), sort_keys=True, default=str).encode())
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    seg = {
        "type": f"{type(segmenter).__module__}.{type(segmenter).__qualname__}",
        "scale": repr(getattr(segmenter, "scale", None)),
        "pixel_size": repr(getattr(segmenter, "pixel_size", None)),
        "config": repr(getattr(segmenter, "config", None)),
    }
    digest.update(json.dumps({"segmenter": seg, "options": _result_options(options)}).encode())
    return digest.hexdigest()


def _result_options(options: PredictOptions) -> dict[str, Any]:
    """The options that change the predictions (the others change only speed)."""
    names = ("tta", "margin", "mask_others", "image_weight", "floor")
    return {name: getattr(options, name) for name in names}


def _sample_digest(shapes: Mapping[str, tuple[int, int]]) -> str:
    rows = sorted([image_id, *shape] for image_id, shape in shapes.items())
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


_RESUME_NOTES = {
    "sample": "the sample's ids or image sizes differ",
    "images": "the sample's ids differ",
    "options": "other prediction options",
    "fingerprint": "other checkpoints (weights or configs), segmenter or options",
    "version": "another version of the resume format",
}


def _open_resume(
    path: str | os.PathLike, book: _Book, classifiers: Sequence, segmenter: Any, options: Any
) -> ResumeLog:
    """Open (checked) the resume file and take its reusable records into ``book``."""
    from hpa_kit.outputs import ResumeLog

    identity = {
        "sample": _sample_digest(book.shapes),
        "images": len(book.shapes),
        "options": _result_options(options),
        "fingerprint": _fingerprint(classifiers, segmenter, options),
    }
    log = ResumeLog(
        path, kind=RESUME_FORMAT, version=RESUME_VERSION, identity=identity, notes=_RESUME_NOTES
    )
    for image_id, record in log.open().items():
        shape = book.shapes.get(image_id)
        size = (record.get("height"), record.get("width"))
        if shape is not None and size == shape and record.get("error") is None:
            if isinstance(record.get("prediction"), str):
                book.resumed(image_id, record["prediction"], cells=record.get("cells"))
    return log


def read_resume(path: str | os.PathLike) -> tuple[dict | None, dict[str, dict]]:
    """``(header, {id: record})`` of a resume file, unchecked; a later record of an id wins.

    A last line without its newline (a run killed while writing) is ignored; so are lines that
    are not JSON records. Records are ``{"id", "prediction", "error", "cells", "height",
    "width"}``; an ``error`` that is not ``None`` marks a failed image.
    """
    from hpa_kit.outputs import ResumeLog

    return ResumeLog.read(path)


# --------------------------------------------------------------------------- checks


def resolve_device(device: str | None = None) -> str:
    """The torch device to use: ``device``, or for ``None`` (or ``"auto"``) CUDA when it is
    available, else the CPU. The one place where the device is chosen.

    Raises :class:`hpa_kit.errors.UsageError` for a device torch does not know or that this
    machine lacks (``cuda`` without a GPU), before anything is loaded.
    """
    if device == "cpu":
        return device  # no need to import torch to know that
    import torch

    if device is None or device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise UsageError(
            f"unknown device {device!r} ({describe(exc)}); use cpu, cuda or cuda:N"
        ) from exc
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(
                f"device {device!r}: no CUDA GPU is available here (torch.cuda.is_available() "
                "is False); use cpu, or leave the device out to choose automatically"
            )
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise UsageError(
                f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)"
            )
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"device {device!r}: MPS is not available here; use cpu")
    return device


def estimate_csv_bytes(shapes: Iterable[tuple[int, int]], *, floor: float = 0.0) -> int:
    """A low estimate of the submission's size for images of ``shapes`` (height, width).

    64 bytes per row, plus 0.008 bytes per image pixel at ``floor`` 0 (19 triplets per cell:
    the sparsest rows of the real sample images; others are up to 10 times larger), a 19th
    of that with a floor. Used to refuse, before the work, a disk that cannot hold even that.

    >>> estimate_csv_bytes([(2048, 2048)] * 10)  # 10 x (64 + 0.008 x 2048 x 2048)
    336184
    """
    per_pixel = 0.008 if floor == 0 else 0.008 / 19
    return int(sum(64 + per_pixel * height * width for height, width in shapes))


def _check_images(images_dir: str | os.PathLike, shapes: Mapping[str, tuple[int, int]]) -> None:
    from hpa_kit.io import channel_path

    folder = Path(images_dir)
    if not folder.is_dir():
        raise UsageError(f"images folder not found: {folder}")
    if not shapes:
        return
    names = set(os.listdir(folder))
    for image_id in shapes:
        if any(channel_path(folder, image_id, color).name in names for color in CHANNELS):
            return
    first = channel_path(folder, next(iter(shapes)), CHANNELS[0])
    raise UsageError(
        f"the images folder {folder} holds none of the sample's {len(shapes)} ids (no {first}, "
        "for one); is it the right folder for this sample?"
    )


def _check_out(out: str | os.PathLike, need_bytes: int) -> None:
    """A writable file path with room; an existing file must be a submission (ours to replace)."""
    from hpa_kit.outputs import check_output_file
    from hpa_kit.submission import COLUMNS

    path = check_output_file(out, what="--out", need_bytes=need_bytes)
    if path.is_file() and path.stat().st_size > 0:
        with open(path, "rb") as handle:
            first = handle.readline(4096).strip()
        if first != ",".join(COLUMNS).encode():
            raise UsageError(
                f"--out {path} exists and is not a submission CSV (its first line is not "
                f"{','.join(COLUMNS)}); it is left untouched: give another path"
            )


def check_inputs(
    images_dir: str | os.PathLike,
    sample: str | os.PathLike | pd.DataFrame,
    *,
    out: str | os.PathLike,
    resume: str | os.PathLike | None = None,
    floor: float = 0.0,
) -> pd.DataFrame:
    """The checks :func:`predict_folder` makes before any work, without loading a model; returns
    the sample (:func:`hpa_kit.submission.read_sample`). Raises
    :class:`hpa_kit.errors.UsageError` naming the path: see the module docstring."""
    from hpa_kit.outputs import check_distinct_files, check_output_file

    sample_df = _load_sample(sample)
    shapes = _shapes(sample_df)
    sample_path = sample if isinstance(sample, (str, os.PathLike)) else None
    check_distinct_files({"--out": out, "--resume": resume, "--sample": sample_path})
    _check_images(images_dir, shapes)
    need = estimate_csv_bytes(shapes.values(), floor=floor)
    _check_out(out, need_bytes=need * (1 if resume is None else 2))
    if resume is not None:
        check_output_file(resume, what="--resume")
    return sample_df


def _shapes(sample_df: pd.DataFrame) -> dict[str, tuple[int, int]]:
    """``{id: (height, width)}`` in sample order."""
    columns = sample_df[["ID", "ImageWidth", "ImageHeight"]].itertuples(index=False)
    return {str(row.ID): (int(row.ImageHeight), int(row.ImageWidth)) for row in columns}


# --------------------------------------------------------------------------- folder


_RESUMED = "resumed"
_NOT_ATTEMPTED = "not attempted (max_images)"


@dataclass(frozen=True)
class _Outcome:
    """One image's row: its prediction (or the placeholder), error, cell count and size."""

    id: str
    prediction: str
    error: str | None
    cells: int
    shape: tuple[int, int]

    def record(self) -> dict[str, Any]:
        height, width = self.shape
        return {"id": self.id, "prediction": self.prediction, "error": self.error,
                "cells": self.cells, "height": height, "width": width}  # fmt: skip


@dataclass
class _Book:
    """What the run has so far: predictions, the batch report, cells, seconds per stage."""

    shapes: dict[str, tuple[int, int]]
    batch: BatchReport = field(default_factory=BatchReport)
    predictions: dict[str, str] = field(default_factory=dict)
    no_cells: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    cells: int = 0

    def add_seconds(self, seconds: Mapping[str, float]) -> None:
        for key, value in seconds.items():
            self.timings[key] = self.timings.get(key, 0.0) + value

    def resumed(self, image_id: str, prediction: str, *, cells: Any) -> None:
        self.predictions[image_id] = prediction
        if cells == 0:
            self.no_cells.append(image_id)
        self.batch.add_skipped(image_id, _RESUMED)

    def record(self, outcome: _Outcome, log: ResumeLog | None) -> None:
        if outcome.error is None:
            self.predictions[outcome.id] = outcome.prediction
            self.batch.add_done(outcome.id)
            if outcome.cells == 0:
                self.no_cells.append(outcome.id)
        else:
            self.batch.add_failure(outcome.id, outcome.error)
        self.cells += outcome.cells
        if log is not None:
            t0 = time.perf_counter()
            log.append(outcome.record())
            self.add_seconds({"write": time.perf_counter() - t0})


def _finish(
    result: JobResult, classifiers: Sequence, options: PredictOptions, book: _Book
) -> _Outcome:
    """Classify a prepared image and format its row (the placeholder when anything failed)."""
    from hpa_kit.submission import cells_prediction_string, placeholder_prediction_string

    shape = book.shapes[result.id]
    placeholder = placeholder_prediction_string(*shape)
    if not result.ok:
        return _Outcome(result.id, placeholder, result.error, 0, shape)
    prepared = result.value
    book.add_seconds(prepared.seconds)
    try:
        t0 = time.perf_counter()
        probs = _classify(prepared, classifiers, options)
        book.add_seconds({"classify": time.perf_counter() - t0})
        n_cells = int(prepared.cell_ids.size)
        if not n_cells:
            return _Outcome(result.id, placeholder, None, 0, shape)
        by_cell = {int(c): p.tolist() for c, p in zip(prepared.cell_ids, probs, strict=True)}
        prediction = cells_prediction_string(prepared.masks, by_cell, floor=options.floor)
        return _Outcome(result.id, prediction, None, n_cells, shape)
    except Exception as exc:  # recorded, the run goes on
        return _Outcome(result.id, placeholder, describe(exc), 0, shape)


@contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _load_sample(sample: str | os.PathLike | pd.DataFrame) -> pd.DataFrame:
    from hpa_kit.submission import read_sample

    return read_sample(sample)  # validated: ids unique and non-empty, sizes positive integers


def _classifiers(checkpoints: Any, options: PredictOptions) -> list:
    if isinstance(checkpoints, (str, os.PathLike)):
        checkpoints = [checkpoints]  # one checkpoint directory
    if checkpoints and isinstance(checkpoints[0], tuple):
        return list(checkpoints)  # loaded already: used on their own device
    return load_ensemble(checkpoints, resolve_device(options.device))


def _runner_options(options: PredictOptions):
    from hpa_kit.runner import RunnerOptions

    return RunnerOptions(
        workers=options.num_workers,
        executor=options.executor,
        prefetch=options.prefetch,
        ordered=True,
        worker_threads=1,
        progress=options.progress,
        desc="predict",
        unit="img",
    )


def predict_folder(
    images_dir: str | os.PathLike,
    sample: str | os.PathLike | pd.DataFrame,
    checkpoints: Sequence[str | os.PathLike] | Sequence[tuple[torch.nn.Module, ClassifierConfig]],
    *,
    out: str | os.PathLike,
    segmenter: Any = None,
    options: PredictOptions = PredictOptions(),
    resume: str | os.PathLike | None = None,
) -> PredictReport:
    """Predict every id of ``sample`` from ``images_dir`` and write the submission CSV ``out``.

    ``checkpoints``: checkpoint directories, or ``[(model, config), ...]`` already loaded (then
    used on their own device). ``segmenter``: ``None`` = ``ClassicalSegmenter()``. ``resume``:
    a JSON-lines file to append finished images to and to skip on a restart (``None`` = none).
    See the module docstring for the pipeline, the checks made before the work
    (:class:`hpa_kit.errors.UsageError`) and :class:`TooManyFailuresError`.
    """
    from hpa_kit.runner import run_jobs

    start = time.perf_counter()
    sample_df = check_inputs(images_dir, sample, out=out, resume=resume, floor=options.floor)
    shapes = _shapes(sample_df)
    classifiers = _classifiers(checkpoints, options)
    if segmenter is None:
        from hpa_kit.segment import ClassicalSegmenter

        segmenter = ClassicalSegmenter()
    book = _Book(shapes)
    log = None if resume is None else _open_resume(resume, book, classifiers, segmenter, options)
    todo = [image_id for image_id in shapes if image_id not in book.predictions]
    limit = len(todo) if options.max_images is None else options.max_images
    todo, left = todo[:limit], todo[limit:]
    for image_id in left:
        book.batch.add_skipped(image_id, _NOT_ATTEMPTED)
    sizes = sorted({config.input_size for _, config in classifiers})
    crop = {"margin": options.margin, "mask_others": options.mask_others,
            "whole": options.image_weight > 0}  # fmt: skip
    stages = _stages(segmenter, os.fspath(Path(images_dir).resolve()), sizes, crop)
    try:
        jobs = run_jobs({i: shapes[i] for i in todo}, stages, _runner_options(options))
        with _torch_threads(options.classify_threads()), closing(jobs):  # workers end here
            for result in jobs:
                book.record(_finish(result, classifiers, options, book), log)
    finally:
        if log is not None:
            log.close()
    report = _write_report(out, sample_df, book, options, processed=len(todo), left=left)
    seconds = time.perf_counter() - start
    report = dataclasses.replace(
        report, seconds=seconds, resume=None if resume is None else Path(resume)
    )
    if report.too_many_failures:
        raise TooManyFailuresError(_failure_message(report, options.max_failures), report)
    return report


def _write_report(
    out: str | os.PathLike,
    sample_df: pd.DataFrame,
    book: _Book,
    options: PredictOptions,
    *,
    processed: int,
    left: Sequence[str],
) -> PredictReport:
    """Write the CSV (a failure to write is a :class:`RunError` naming the file)."""
    from hpa_kit.submission import write_submission

    t0 = time.perf_counter()
    try:
        write_report = write_submission(
            out, book.predictions, sample_df, failures=book.batch.failed
        )
    except OSError as exc:
        raise RunError(f"cannot write {out}: {describe(exc)}") from exc
    book.add_seconds({"write_csv": time.perf_counter() - t0})
    return PredictReport(
        out=Path(out),
        total=len(book.shapes),
        predicted=len(book.predictions),
        resumed=sum(reason == _RESUMED for reason in book.batch.skipped.values()),
        processed=processed,
        batch=book.batch,
        no_cells=tuple(book.no_cells),
        not_attempted=tuple(left),
        cells=book.cells,
        seconds=0.0,
        timings=book.timings,
        write_report=write_report,
        allowed_failures=allowed_failures(options.max_failures, len(book.shapes)),
    )


def _failure_message(report: PredictReport, limit: float) -> str:
    failed = report.failures
    image_id, cause = next(iter(failed.items()))
    if report.predicted == 0:
        what = f"every attempted image failed ({len(failed)})"
    else:
        what = (
            f"{len(failed)} of {report.total} images failed, more than max_failures {limit:g} "
            f"allows ({report.allowed_failures})"
        )
    return (
        f"{what}; {report.out} was written with placeholder rows for them (first: {image_id}: "
        f"{cause})"
    )

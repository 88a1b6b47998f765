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

Over a folder, :func:`predict_folder` overlaps CPU work with classification: worker processes
(``num_workers``; 0 runs everything in the calling thread) read each image, segment it (the
whole classical segmenter, or only the CPU label step of the network segmenter, whose maps run
on the device in the main thread), crop it and encode its masks, at most ``prefetch`` images
ahead, while the main thread classifies. Memory is bounded by ``prefetch`` images plus one
image's crops. Each finished image is appended to the *resume file* (JSON lines, flushed and
fsynced): a restarted run with the same models and options skips the ids already there (a
truncated last line from a kill is dropped), so the final CSV never repeats a row and equals an
uninterrupted run's. A failing image (missing channel, wrong size, ...) is recorded with its id
and cause, gets a placeholder row and the run goes on; failed ids are retried by a restarted
run. If a worker process dies (e.g. killed for memory), a new pool is started and the images
that were in flight are retried one at a time, so only the image that kills a worker fails. The CSV is written by :func:`hpa_kit.submission.write_submission`: one row per sample id.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hpa_kit.io import CHANNELS

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import torch

    from hpa_kit.model import ClassifierConfig

__all__ = [
    "RESUME_VERSION",
    "PredictOptions",
    "ResumeMismatchError",
    "PredictReport",
    "blend_probs",
    "classify_crops",
    "load_ensemble",
    "padded_batch",
    "predict_folder",
    "predict_image",
    "read_resume",
]

RESUME_VERSION = 1
_EXECUTORS = ("process", "thread")


class ResumeMismatchError(ValueError):
    """The resume file was written by a run with other models, segmenter or options."""


@dataclass(frozen=True)
class PredictOptions:
    """How :func:`predict_image` and :func:`predict_folder` work.

    - ``tta``: ``"none"``, ``"seed"`` (identity, flips, x0.8, x1.2) or ``"d4"`` (8 flips/rotations);
    - ``batch_size``: crops per forward pass (per TTA view);
    - ``margin``, ``mask_others``: crop rules (:func:`hpa_kit.crop.crop_cells`);
    - ``image_weight``: ``w`` in ``p' = (1 - w) p_cell + w p_image`` (0 = cells only);
    - ``floor``: emit (cell, class) triplets with probability ``>= floor`` (0 = all classes);
    - ``num_workers``: CPU worker processes (or threads) for read/segment/crop/encode, 0 = none;
    - ``prefetch``: images prepared ahead of the classifier (bounds memory);
    - ``executor``: ``"process"`` (spawned processes; needs a picklable segmenter) or ``"thread"``;
    - ``device``: ``"cuda"``, ``"cpu"``, ... ; ``None`` = CUDA when available, else CPU;
    - ``amp``: float16 autocast for the classifiers on CUDA (ignored on CPU);
    - ``max_images``: stop after this many images in this run (the rest stay unattempted);
    - ``progress``: show a tqdm bar (images/s and ETA).
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
    progress: bool = True

    def __post_init__(self) -> None:
        from hpa_kit.tta import resolve_tta

        resolve_tta(self.tta)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.margin < 0:
            raise ValueError(f"margin must be >= 0, got {self.margin}")
        if not 0.0 <= self.image_weight <= 1.0:
            raise ValueError(f"image_weight must be in [0, 1], got {self.image_weight}")
        if not 0.0 <= self.floor <= 1.0:
            raise ValueError(f"floor must be in [0, 1], got {self.floor}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {self.prefetch}")
        if self.executor not in _EXECUTORS:
            raise ValueError(f"executor must be one of {_EXECUTORS}, got {self.executor!r}")
        if self.max_images is not None and self.max_images < 0:
            raise ValueError(f"max_images must be >= 0 or None, got {self.max_images}")

    def replace(self, **changes: Any) -> PredictOptions:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class PredictReport:
    """What :func:`predict_folder` did.

    ``total`` sample ids; ``predicted`` of them have a real prediction in the CSV (this run or
    resumed); ``resumed`` came from the resume file; ``processed`` were attempted in this run;
    ``failures`` maps id -> cause (placeholder rows); ``no_cells`` had no cell (placeholder
    rows); ``not_attempted`` were left by ``max_images`` (placeholder rows); ``cells`` were
    classified in this run; ``timings`` sums seconds per stage (worker stages summed over
    workers, so they can exceed ``seconds``); ``write_report`` is the
    :func:`hpa_kit.submission.write_submission` report.
    """

    out: Path
    total: int
    predicted: int
    resumed: int
    processed: int
    failures: dict[str, str]
    no_cells: tuple[str, ...]
    not_attempted: tuple[str, ...]
    cells: int
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)
    resume: Path | None = None
    write_report: Any = None

    @property
    def complete(self) -> bool:
        """Every sample id was attempted (failures allowed)."""
        return not self.not_attempted

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

    All must predict the same classes in the same order; channels must be among RGBY.
    """
    from hpa_kit.model import load_classifier

    out = []
    for path in paths:
        model, config = load_classifier(path, device=device)
        if out and config.class_names != out[0][1].class_names:
            raise ValueError(
                f"checkpoint {path} predicts {config.num_classes} classes {config.class_names[:3]}..., "
                f"unlike the first checkpoint ({out[0][1].num_classes} classes); an ensemble must agree"
            )
        out.append((model, config))
    if not out:
        raise ValueError("no checkpoints given")
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


# --------------------------------------------------------------------------- worker jobs


def _worker_init() -> None:  # pragma: no cover - runs in worker processes
    import cv2

    cv2.setNumThreads(1)


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
    image_id: str,
    shape: tuple[int, int],
    segmenter: Any,
    sizes: Sequence[int],
    crop: dict,
) -> _Prepared:
    """Worker: read, segment (whole segmenter), crop, encode."""
    seconds: dict[str, float] = {}
    image = _read_checked(images_dir, image_id, shape, seconds)
    t0 = time.perf_counter()
    _, cell_labels = segmenter.segment([image])[0]
    seconds["segment"] = time.perf_counter() - t0
    return _prepare(image_id, image, cell_labels, sizes, encode=True, seconds=seconds, **crop)


def _job_read(
    images_dir: str, image_id: str, shape: tuple[int, int]
) -> tuple[np.ndarray, dict[str, float]]:
    """Worker: read only (the network segmenter's maps run on the device in the main thread)."""
    seconds: dict[str, float] = {}
    return _read_checked(images_dir, image_id, shape, seconds), seconds


def _job_post(
    image_id: str,
    image: np.ndarray,
    maps: tuple[np.ndarray, np.ndarray],
    labels_fn: Callable[..., tuple[np.ndarray, np.ndarray]],
    sizes: Sequence[int],
    crop: dict,
    seconds: dict[str, float],
) -> _Prepared:
    """Worker: maps -> labels (CPU part of the network segmenter), crop, encode."""
    t0 = time.perf_counter()
    _, cell_labels = labels_fn(maps[0], maps[1], image.shape[:2])
    seconds["segment"] = seconds.get("segment", 0.0) + time.perf_counter() - t0
    return _prepare(image_id, image, cell_labels, sizes, encode=True, seconds=seconds, **crop)


class _InlineExecutor(Executor):
    """Runs each job at submit time in the calling thread (``num_workers=0``)."""

    def submit(self, fn, /, *args, **kwargs):  # noqa: D102
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:  # recorded per image by the caller
            future.set_exception(exc)
        return future


def _make_executor(options: PredictOptions) -> Executor:
    if options.num_workers == 0:
        return _InlineExecutor()
    if options.executor == "thread":
        from concurrent.futures import ThreadPoolExecutor

        return ThreadPoolExecutor(max_workers=options.num_workers)
    import multiprocessing
    from concurrent.futures import BrokenExecutor, ProcessPoolExecutor, ThreadPoolExecutor

    pool = ProcessPoolExecutor(
        max_workers=options.num_workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_worker_init,
    )
    try:
        pool.submit(_ping).result()
    except BrokenExecutor as exc:
        # Spawned workers re-import __main__: that fails for code read from stdin and for a
        # script without an `if __name__ == "__main__":` guard. Threads need no re-import.
        pool.shutdown(wait=False, cancel_futures=True)
        warnings.warn(
            f"worker processes cannot start here ({_cause(exc)}); preparing images in "
            f"{options.num_workers} threads instead. In a script, call predict_folder under "
            "`if __name__ == '__main__':` to use processes.",
            RuntimeWarning,
            stacklevel=3,
        )
        return ThreadPoolExecutor(max_workers=options.num_workers)
    return pool


def _ping() -> bool:
    """A no-op job: proves that the worker processes start."""
    return True


def _is_network(segmenter: Any) -> bool:
    """True for segmenters whose ``maps`` must run in the main thread (on the device)."""
    try:
        from hpa_kit.segment import NetworkSegmenter
    except ImportError:  # pragma: no cover - segment module absent
        return False
    return isinstance(segmenter, NetworkSegmenter)


def _labels_fn(segmenter: Any) -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """A picklable ``(nuc, cell, shape) -> labels`` for the network segmenter's CPU step."""
    config = getattr(segmenter, "config", None)
    if config is not None:
        import functools

        from hpa_kit.segment import maps_to_labels

        return functools.partial(_maps_to_labels, maps_to_labels, config)
    return segmenter.labels


def _maps_to_labels(fn, config, nuc, cell, shape):
    return fn(nuc, cell, shape=shape, config=config)


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
    chosen = {
        k: getattr(options, k) for k in ("tta", "margin", "mask_others", "image_weight", "floor")
    }
    digest.update(json.dumps({"segmenter": seg, "options": chosen}, sort_keys=True).encode())
    return digest.hexdigest()


def read_resume(path: str | os.PathLike) -> tuple[str | None, dict[str, dict]]:
    """``(fingerprint, {id: record})`` of a resume file; a later record of an id wins.

    A last line without its newline (a run killed while writing) is ignored; so are lines that
    are not JSON records. Records are ``{"id", "prediction", "error", "cells"}``; an ``error``
    that is not ``None`` marks a failed image.
    """
    path = Path(path)
    if not path.exists():
        return None, {}
    lines = path.read_bytes().split(b"\n")[:-1]  # the piece after the last newline is partial
    fingerprint = None
    records: dict[str, dict] = {}
    for number, line in enumerate(lines):
        try:
            data = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if not isinstance(data, dict):
            continue
        if number == 0 and "fingerprint" in data:
            fingerprint = data["fingerprint"]
        elif isinstance(data.get("id"), str) and isinstance(data.get("prediction"), str):
            records[data["id"]] = data
    return fingerprint, records


class _ResumeWriter:
    def __init__(self, path: Path, fingerprint: str):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        data = path.read_bytes() if path.exists() else b""
        cut = data.rfind(b"\n") + 1  # drop a truncated last line before appending
        with open(path, "r+b" if path.exists() else "wb") as f:
            f.truncate(cut)
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        if cut == 0:
            header = {"hpa_kit_resume": RESUME_VERSION, "fingerprint": fingerprint}
            self.write(header)

    def write(self, record: Mapping[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


# --------------------------------------------------------------------------- folder


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _load_sample(sample: str | os.PathLike | pd.DataFrame) -> pd.DataFrame:
    from hpa_kit.submission import read_sample

    return read_sample(sample)  # validated: ids unique and non-empty, sizes positive integers


def _cause(exc: BaseException) -> str:
    text = str(exc).strip().replace("\n", " ")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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
    See the module docstring for the pipeline; the returned report lists failures.
    """
    from hpa_kit.progress import progress_bar
    from hpa_kit.submission import (
        cells_prediction_string,
        placeholder_prediction_string,
        write_submission,
    )

    start = time.perf_counter()
    if options.num_workers > 0 and options.executor == "process":
        images_dir = os.fspath(Path(images_dir).resolve())
    else:
        images_dir = os.fspath(images_dir)
    sample_df = _load_sample(sample)
    shapes = {
        str(row.ID): (int(row.ImageHeight), int(row.ImageWidth))
        for row in sample_df[["ID", "ImageWidth", "ImageHeight"]].itertuples(index=False)
    }
    if checkpoints and isinstance(checkpoints[0], tuple):
        classifiers = list(checkpoints)
    else:
        classifiers = load_ensemble(checkpoints, options.device or _default_device())
    if segmenter is None:
        from hpa_kit.segment import ClassicalSegmenter

        segmenter = ClassicalSegmenter()
    sizes = sorted({config.input_size for _, config in classifiers})
    crop = {
        "margin": options.margin,
        "mask_others": options.mask_others,
        "whole": options.image_weight > 0,
    }

    predictions: dict[str, str] = {}
    failures: dict[str, str] = {}
    no_cells: list[str] = []
    timings: dict[str, float] = {}
    resumed = 0
    writer = None
    if resume is not None:
        fingerprint = _fingerprint(classifiers, segmenter, options)
        found, records = read_resume(resume)
        if found != fingerprint:
            if records:
                raise ResumeMismatchError(
                    f"resume file {resume} was written by a run with other models, segmenter or "
                    "options (or is not a resume file); delete it or pass another resume file"
                )
            Path(resume).unlink(missing_ok=True)  # a header alone: nothing to keep
        for image_id, record in records.items():
            if image_id in shapes and record.get("error") is None:
                predictions[image_id] = record["prediction"]
                if record.get("cells") == 0:
                    no_cells.append(image_id)
        resumed = len(predictions)
        writer = _ResumeWriter(Path(resume), fingerprint)

    todo = [image_id for image_id in shapes if image_id not in predictions]
    if options.max_images is not None:
        todo, left = todo[: options.max_images], todo[options.max_images :]
    else:
        left = []

    cells = 0
    network = _is_network(segmenter)
    labels_fn = _labels_fn(segmenter) if network else None

    def add_seconds(seconds: Mapping[str, float]) -> None:
        for key, value in seconds.items():
            timings[key] = timings.get(key, 0.0) + value

    def record(image_id: str, prediction: str, error: str | None, n_cells: int) -> None:
        if error is None:
            predictions[image_id] = prediction
        else:
            failures[image_id] = error
        if writer is not None:
            t0 = time.perf_counter()
            writer.write(
                {"id": image_id, "prediction": prediction, "error": error, "cells": n_cells}
            )
            add_seconds({"write": time.perf_counter() - t0})

    from concurrent.futures import BrokenExecutor

    pool = [_make_executor(options)]  # replaced when a worker process dies
    pending = deque(todo)
    suspects: set[str] = set()  # in flight when a worker died: retried one at a time
    queue_a: deque[tuple[str, Future]] = deque()  # read (network) or full preparation
    queue_b: deque[tuple[str, Future | None, str | None]] = deque()  # network post-processing
    bar = progress_bar(total=len(todo), enabled=options.progress, unit="img", desc="predict")

    def refill() -> None:
        limit = 1 if suspects else options.prefetch
        while pending and len(queue_a) + len(queue_b) < limit:
            image_id = pending.popleft()
            if network:
                job = pool[0].submit(_job_read, images_dir, image_id, shapes[image_id])
            else:
                job = pool[0].submit(
                    _job_full, images_dir, image_id, shapes[image_id], segmenter, sizes, crop
                )
            queue_a.append((image_id, job))

    def worker_died(first: Sequence[str], exc: BaseException) -> None:
        """The pool is broken: retry the images in flight one at a time in a new pool; an image
        that was alone in flight when a worker died is the cause and is recorded as failed."""
        in_flight = [*first, *(i for i, *_ in queue_b), *(i for i, _ in queue_a)]
        queue_a.clear()
        queue_b.clear()
        pool[0].shutdown(wait=False, cancel_futures=True)
        pool[0] = _make_executor(options)
        if len(in_flight) == 1:
            (image_id,) = in_flight
            suspects.discard(image_id)
            height, width = shapes[image_id]
            cause = f"a worker process died while preparing this image ({_cause(exc)})"
            record(image_id, placeholder_prediction_string(height, width), cause, 0)
            bar.update(1)
        else:
            suspects.update(in_flight)
            pending.extendleft(reversed(in_flight))

    try:
        refill()
        while queue_a or queue_b:
            if network:
                # Device maps for the images already read, so workers post-process while we classify.
                broken = False
                while queue_a and len(queue_b) < max(1, options.prefetch // 2):
                    image_id, job = queue_a.popleft()
                    try:
                        image, seconds = job.result()
                        t0 = time.perf_counter()
                        maps = segmenter.maps([image])[0]
                        add_seconds({"segment_device": time.perf_counter() - t0})
                        post = pool[0].submit(
                            _job_post, image_id, image, maps, labels_fn, sizes, crop, seconds
                        )
                        queue_b.append((image_id, post, None))
                    except BrokenExecutor as exc:
                        earlier = [i for i, *_ in queue_b]
                        queue_b.clear()
                        worker_died([*earlier, image_id], exc)
                        broken = True
                        break
                    except Exception as exc:  # recorded, the run goes on
                        queue_b.append((image_id, None, _cause(exc)))
                if broken:
                    refill()
                    continue
                image_id, job, error = queue_b.popleft()
            else:
                image_id, job = queue_a.popleft()
                error = None
            height, width = shapes[image_id]
            n_cells = 0
            try:
                if error is not None:
                    raise RuntimeError(error)
                prepared = job.result()
            except BrokenExecutor as exc:
                worker_died([image_id], exc)
                refill()
                continue
            except Exception as exc:  # recorded, the run goes on
                prepared = None
                cause = error if error is not None else _cause(exc)
                record(image_id, placeholder_prediction_string(height, width), cause, 0)
            if prepared is not None:
                try:
                    add_seconds(prepared.seconds)
                    t0 = time.perf_counter()
                    probs = _classify(prepared, classifiers, options)
                    add_seconds({"classify": time.perf_counter() - t0})
                    n_cells = int(prepared.cell_ids.size)
                    if n_cells:
                        probs_by_cell = {
                            int(c): p.tolist()
                            for c, p in zip(prepared.cell_ids, probs, strict=True)
                        }
                        prediction = cells_prediction_string(
                            prepared.masks, probs_by_cell, floor=options.floor
                        )
                    else:
                        no_cells.append(image_id)
                        prediction = placeholder_prediction_string(height, width)
                    record(image_id, prediction, None, n_cells)
                except Exception as exc:  # recorded, the run goes on
                    n_cells = 0
                    record(image_id, placeholder_prediction_string(height, width), _cause(exc), 0)
                del prepared
            suspects.discard(image_id)
            cells += n_cells
            bar.update(1)
            if failures:
                bar.set_postfix(failed=len(failures), refresh=False)
            refill()
    finally:
        bar.close()
        pool[0].shutdown(wait=True, cancel_futures=True)
        if writer is not None:
            writer.close()

    t0 = time.perf_counter()
    write_report = write_submission(out, predictions, sample_df, failures=failures)
    add_seconds({"write_csv": time.perf_counter() - t0})
    return PredictReport(
        out=Path(out),
        total=len(shapes),
        predicted=len(predictions),
        resumed=resumed,
        processed=len(todo),
        failures=dict(failures),
        no_cells=tuple(no_cells),
        not_attempted=tuple(left),
        cells=cells,
        seconds=time.perf_counter() - start,
        timings=timings,
        resume=None if resume is None else Path(resume),
        write_report=write_report,
    )

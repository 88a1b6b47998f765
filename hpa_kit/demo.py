"""The whole pipeline on synthetic data, end to end, on a CPU: ``run_demo(out) -> DemoResult``.

What it does (each step uses the package's own modules):

1. **Data** (:func:`hpa_kit.synth.write_dataset`): a training set and a test set of
   synthetic HPA-like images. The training set keeps only image-level labels
   (``train.csv``); the test set's per-cell truth (``truth.csv``, ``masks/``) is read only
   for scoring. Images hold 1-3 classes spread over different cells, so classifying each
   cell matters.
2. **Weak labels** (:func:`write_cell_crops`): every training image is segmented with the
   weights-free classical segmenter (never with the synthetic label images) and each cell
   is cropped exactly as the predictor crops (:func:`hpa_kit.crop.crop_cells`); a crop gets
   its *image's* labels. Folds are drawn per image, so no image has cells on both sides.
3. **Training** (:func:`hpa_kit.train.fit`): a small timm model from scratch on the crops,
   briefly, on the CPU.
4. **Prediction** (:func:`hpa_kit.predict.predict_folder`): the test set is segmented with
   the same classical segmenter, every cell is classified with TTA, ``submission.csv`` is
   written and validated (:func:`hpa_kit.submission.validate_submission`).
5. **Baselines**, on the very same cells (the masks are taken from ``submission.csv``):
   ``baseline.csv`` gives every cell its image's prediction from the same classifier applied
   to the whole image (resized to its input size, same TTA); ``baseline_cell_mean.csv``
   gives every cell the mean of its image's cell probabilities (the same per-cell numbers,
   with the within-image differences removed: the cleanest measure of what per-cell
   classification adds).
6. **Scores** (:func:`hpa_kit.metric.score_submission`, mask IoU >= 0.6) of the three files
   against ``truth.csv``; the segmentation against the synthetic cell labels
   (:func:`hpa_kit.segment.match_labels`, F1 at IoU 0.6); overlays of a few test images
   (:func:`hpa_kit.viz.overlay`: predicted outlines and top-2 classes, beside the truth);
   ``summary.json`` with both mAPs, the F1 and seconds per stage.

Scale. :class:`hpa_kit.segment.SegConfig` declares its areas in pixels of a full-resolution
(2048 px) HPA image, and the classical maps smooth by a length in the same unit. A synthetic
image of ``size`` px stands for a 2048 px HPA image shrunk ``pixel_size = 2048 / size``
times (every synth length is a fraction of the image side), so the demo segments with
``ClassicalSegmenter(seg_scale, pixel_size=2048 / size)``, which scales those areas by
``(seg_scale / pixel_size) ** 2`` and the lengths by ``seg_scale / pixel_size``; with the
default ``pixel_size=1`` the classical segmenter finds no cell in a 384 px synthetic image.

Output folder layout (``out``)::

    train/  test/          synthetic data (write_dataset layout)
    crops/                 crops/images/*.png and crops.csv (ID, Label, fold, image)
    model/                 fit() output: best/, last/, log.jsonl
    submission.csv         per-cell prediction (validated)
    baseline.csv           whole-image confidence for every cell
    baseline_cell_mean.csv mean cell confidence for every cell
    overlays/{id}.png      prediction (left) and truth (right) for a few test images
    summary.json           scores, F1, counts, seconds per stage, paths, config

Everything is seeded: the same config on the same machine gives the same numbers (torch on
the CPU is deterministic for these models; the report's timings are not).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hpa_kit.io import CHANNELS
from hpa_kit.segment import ClassicalSegmenter
from hpa_kit.synth import SynthConfig

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = [
    "HPA_SIZE",
    "DemoConfig",
    "DemoResult",
    "baseline_predictions",
    "format_summary",
    "quick_config",
    "run_demo",
    "segmentation_f1",
    "submission_cells",
    "write_cell_crops",
]

HPA_SIZE = 2048
"""Side, in pixels, of the full-resolution HPA image a synthetic image stands for."""

MARKER = ".hpa-kit-demo"
# Paths a demo writes under ``out`` (removed before a rerun into a folder holding the marker).
_OUTPUTS = (
    "train",
    "test",
    "crops",
    "model",
    "overlays",
    "submission.csv",
    "baseline.csv",
    "baseline_cell_mean.csv",
    "summary.json",
)


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class DemoConfig:
    """Every switch of the demo. The defaults take about 2-3 minutes on a 2-core CPU.

    - ``n_train``, ``n_test``: synthetic images in each set; ``size``: their side in px;
    - ``seg_scale``: scale of the segmentation maps relative to the image;
    - ``arch``, ``input_size``, ``channels``: the timm classifier and its crops;
    - ``epochs``, ``batch_size``, ``lr``: training (AdamW, cosine, BCE);
    - ``n_folds``: one fold of the training *images* (``1 / n_folds``) validates, which picks
      the best epoch by validation loss;
    - ``tta``: TTA set for prediction and the baseline (``"none"``, ``"seed"``, ``"d4"``);
    - ``margin``: crop margin (as the predictor's); ``overlays``: test images drawn;
    - ``seed``: base seed of the data (train ``seed``, test ``seed + 1``) and of training;
    - ``synth``: the synthetic image recipe; ``progress``: tqdm bars;
    - ``torch_threads``: torch's CPU threads during the run (restored after; ``None`` keeps
      torch's setting). 1 by default: on a CPU shared with other jobs, two OpenMP threads
      that wait for each other made training 3-25x slower than one thread here.
    """

    n_train: int = 120
    n_test: int = 24
    size: int = 384
    seg_scale: float = 1.0
    arch: str = "lcnet_050"
    input_size: int = 48
    channels: tuple[str, ...] = ("red", "green", "blue")
    epochs: int = 8
    batch_size: int = 32
    lr: float = 3e-3
    n_folds: int = 8
    tta: str = "seed"
    margin: float = 0.1
    overlays: int = 3
    seed: int = 0
    synth: SynthConfig = field(default_factory=SynthConfig)
    progress: bool = True
    torch_threads: int | None = 1

    def __post_init__(self) -> None:
        from hpa_kit.tta import resolve_tta

        for name in ("n_train", "n_test", "epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"DemoConfig.{name} must be an int >= 1, got {value!r}")
        if self.n_folds < 2 or self.n_train < self.n_folds:
            raise ValueError(
                f"DemoConfig needs 2 <= n_folds <= n_train, got n_folds={self.n_folds}, "
                f"n_train={self.n_train}"
            )
        if not 64 <= self.size <= HPA_SIZE:
            raise ValueError(f"DemoConfig.size must be in [64, {HPA_SIZE}], got {self.size}")
        if not 0 < self.seg_scale <= 1:
            raise ValueError(f"DemoConfig.seg_scale must be in (0, 1], got {self.seg_scale}")
        if self.input_size < 16:
            raise ValueError(f"DemoConfig.input_size must be >= 16, got {self.input_size}")
        bad = [c for c in self.channels if c not in CHANNELS]
        if bad or not self.channels:
            raise ValueError(
                f"DemoConfig.channels must be names from {CHANNELS}, got {self.channels}"
            )
        if self.lr <= 0 or self.margin < 0 or self.overlays < 0:
            raise ValueError(
                f"DemoConfig needs lr > 0, margin >= 0, overlays >= 0; got {self.lr}, "
                f"{self.margin}, {self.overlays}"
            )
        resolve_tta(self.tta)
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(
                f"DemoConfig.torch_threads must be >= 1 or None, got {self.torch_threads}"
            )

    @property
    def pixel_size(self) -> float:
        """Full-resolution HPA pixels per synthetic image pixel (``2048 / size``)."""
        return HPA_SIZE / self.size

    def replace(self, **changes: Any) -> DemoConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["pixel_size"] = self.pixel_size
        return data


def quick_config(**changes: Any) -> DemoConfig:
    """A reduced demo (small images, one short epoch, no TTA) for tests: ~10-20 s on 2 cores."""
    base = DemoConfig(
        n_train=8,
        n_test=3,
        size=192,
        arch="lcnet_035",
        input_size=32,
        epochs=1,
        batch_size=32,
        n_folds=4,
        tta="none",
        overlays=1,
        synth=SynthConfig(cells=(6, 10)),
        progress=False,
    )
    return base.replace(**changes)


# --------------------------------------------------------------------------- segmentation


# --------------------------------------------------------------------------- weak labels


def write_cell_crops(
    images_dir: str | os.PathLike,
    table: pd.DataFrame,
    out: str | os.PathLike,
    *,
    segmenter: Any,
    size: int,
    margin: float = 0.1,
    channels: Sequence[str] = ("red", "green", "blue"),
    progress: bool = False,
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Segment each image of ``table`` (``ID``, ``Label``, optional ``fold``) and write every
    cell's crop as an image of its own, labelled with its image's labels (weak labels).

    Crops are cut as the predictor cuts them (:func:`hpa_kit.crop.crop_cells`, ``size``,
    ``margin``, other cells masked) and written as ``out/{image}_c{cell:04d}_{color}.png``.
    Returns ``(crops table with ID, Label, image and fold if given, failures id -> cause)``;
    a failing image is recorded and the others go on.
    """
    import pandas as pd

    from hpa_kit.crop import crop_cells
    from hpa_kit.io import read_image, write_channels
    from hpa_kit.progress import progress_bar

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    index = [CHANNELS.index(c) for c in channels]
    rows: list[dict[str, Any]] = []
    failures: dict[str, str] = {}
    has_fold = "fold" in table.columns
    records = table.to_dict("records")
    for record in progress_bar(records, enabled=progress, desc="crops", unit="image"):
        image_id = str(record["ID"])
        try:
            image = read_image(images_dir, image_id, channels=CHANNELS)
            _, cells = segmenter.segment([image])[0]
            result = crop_cells(image, cells, size=size, margin=margin, mask_others=True)
            if not result.cell_ids.size:
                raise ValueError("no cell found")
            for cell, crop in zip(result.cell_ids, result.crops, strict=True):
                crop_id = f"{image_id}_c{int(cell):04d}"
                write_channels(out, crop_id, crop[..., index], channels=tuple(channels))
                row = {"ID": crop_id, "Label": record["Label"], "image": image_id}
                if has_fold:
                    row["fold"] = int(record["fold"])
                rows.append(row)
        except (OSError, ValueError) as exc:
            failures[image_id] = f"{type(exc).__name__}: {exc}"
    columns = ["ID", "Label", "image"] + (["fold"] if has_fold else [])
    return pd.DataFrame(rows, columns=columns), failures


# --------------------------------------------------------------------------- submissions


def submission_cells(prediction: str) -> tuple[list[str], np.ndarray]:
    """``(masks, probs)`` of one PredictionString: the distinct masks in order of first
    appearance (the cells) and a ``(cells, 19)`` float32 table of their confidences (0 where
    a class is absent). The placeholder ``0 1 <empty mask>`` counts as one cell.

    >>> masks, probs = submission_cells("0 0.5 AA 3 0.25 AA 0 0.75 BB")
    >>> masks, probs[:, [0, 3]].tolist()
    (['AA', 'BB'], [[0.5, 0.25], [0.75, 0.0]])
    """
    from hpa_kit.labels import NUM_CLASSES
    from hpa_kit.submission import parse_prediction_string

    order: dict[str, int] = {}
    entries = []
    for cls, conf, mask in parse_prediction_string(prediction):
        entries.append((order.setdefault(mask, len(order)), int(cls), float(conf)))
    probs = np.zeros((len(order), NUM_CLASSES), dtype=np.float32)
    for cell, cls, conf in entries:
        probs[cell, cls] = conf
    return list(order), probs


def _is_placeholder(masks: list[str], shape: tuple[int, int]) -> bool:
    """True for the placeholder row (one empty mask: no cell found)."""
    from hpa_kit.rle import empty_mask_string

    return len(masks) == 1 and masks[0] == empty_mask_string(*shape)


def baseline_predictions(prediction: str, image_probs: Sequence[float]) -> str:
    """Every cell (mask) of ``prediction`` with the same per-class confidences
    ``image_probs`` (19 values): the image-level baseline on the same segmentation.

    >>> baseline_predictions("0 0.9 AA 5 0.1 AA 0 0.2 BB", [0.5] + [0.0] * 17 + [0.25])
    '0 0.5 AA 18 0.25 AA 0 0.5 BB 18 0.25 BB'
    """
    from hpa_kit.submission import cells_prediction_string

    masks, _ = submission_cells(prediction)
    probs = [float(p) for p in image_probs]
    by_cell = {cell: probs for cell in range(1, len(masks) + 1)}
    mask_by_cell = {cell: mask for cell, mask in enumerate(masks, start=1)}
    return cells_prediction_string(mask_by_cell, by_cell, floor=1e-12)


def _labels_from_masks(masks: Sequence[str], shape: tuple[int, int]) -> np.ndarray:
    from hpa_kit.rle import decode_binary_mask

    labels = np.zeros(shape, dtype=np.int32)
    for cell, mask in enumerate(masks, start=1):
        labels[decode_binary_mask(mask, *shape)] = cell
    return labels


def segmentation_f1(
    submission: pd.DataFrame, masks_dir: str | os.PathLike, *, threshold: float = 0.6
) -> dict[str, float]:
    """Cells of ``submission`` against the true label images ``masks_dir/{id}_cells.png``,
    one-to-one at IoU >= ``threshold`` (:func:`hpa_kit.segment.match_labels`), pooled over
    images: ``{"f1", "precision", "recall", "mean_iou", "n_true", "n_pred", "tp"}``."""
    from hpa_kit.io import read_label_image
    from hpa_kit.segment import match_labels

    tp = n_true = n_pred = 0
    iou_sum = 0.0
    for row in submission.itertuples(index=False):
        shape = (int(row.ImageHeight), int(row.ImageWidth))
        truth = read_label_image(Path(masks_dir) / f"{row.ID}_cells.png")
        masks, probs = submission_cells(row.PredictionString)
        if _is_placeholder(masks, shape):
            masks = []
        match = match_labels(truth, _labels_from_masks(masks, shape), threshold=threshold)
        tp += match.tp
        n_true += match.n_true
        n_pred += match.n_pred
        iou_sum += match.mean_iou * match.tp
    return {
        "threshold": threshold,
        "f1": 2 * tp / (n_true + n_pred) if n_true + n_pred else 0.0,
        "precision": tp / n_pred if n_pred else 0.0,
        "recall": tp / n_true if n_true else 0.0,
        "mean_iou": iou_sum / tp if tp else 0.0,
        "n_true": n_true,
        "n_pred": n_pred,
        "tp": tp,
    }


# --------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class DemoResult:
    """What :func:`run_demo` did; ``summary`` is also written to ``paths["summary"]``."""

    out: Path
    summary: dict[str, Any]
    paths: dict[str, Path]

    @property
    def map(self) -> float:
        return float(self.summary["scores"]["cells"]["map"])

    @property
    def baseline_map(self) -> float:
        return float(self.summary["scores"]["baseline"]["map"])


class _Stages:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str, log) -> Iterator[None]:
        log(f"[demo] {name} ...")
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 2)
        log(f"[demo] {name}: {self.seconds[name]:.1f} s")


def _prepare_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"demo output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise FileExistsError(
                f"{out} is not empty and was not written by `hpa-kit demo` (no {MARKER} file); "
                "choose an empty or new folder"
            )
        for name in _OUTPUTS:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by hpa-kit demo; rerunning the demo replaces its outputs\n")


def _image_level_probs(images_dir, ids, model, config, *, tta: str) -> dict[str, np.ndarray]:
    from hpa_kit.io import read_image, resize_area
    from hpa_kit.predict import classify_crops

    out = {}
    for image_id in ids:
        image = read_image(images_dir, image_id, channels=CHANNELS)
        whole = resize_area(image, config.input_size)[None]
        out[image_id] = classify_crops(whole, model, config, tta=tta, amp=False)[0]
    return out


def _write_overlays(out_dir, images_dir, truth_df, sub_df, ids) -> list[Path]:
    from hpa_kit.io import read_image
    from hpa_kit.viz import annotate_cells, composite, draw_outlines, overlay, save_png

    truth_rows = truth_df.set_index("ID")["PredictionString"]
    rows = sub_df.set_index("ID")
    paths = []
    for image_id in ids:
        image = read_image(images_dir, image_id, channels=CHANNELS)
        shape = image.shape[:2]
        masks, probs = submission_cells(rows.loc[image_id, "PredictionString"])
        if _is_placeholder(masks, shape):
            masks, probs = [], probs[:0]
        labels = _labels_from_masks(masks, shape)
        left = overlay(image, labels, probs={c + 1: p for c, p in enumerate(probs)}, top_k=2)
        true_masks, true_probs = submission_cells(truth_rows.loc[image_id])
        truth_labels = _labels_from_masks(true_masks, shape)
        texts = {
            cell: "true " + "|".join(str(c) for c in np.flatnonzero(true_probs[cell - 1] > 0))
            for cell in range(1, len(true_masks) + 1)
        }
        right = draw_outlines(composite(image), truth_labels)
        right = annotate_cells(right, truth_labels, texts)
        gap = np.full((shape[0], 4, 3), 255, dtype=np.uint8)
        paths.append(save_png(Path(out_dir) / f"{image_id}.png", np.hstack([left, gap, right])))
    return paths


def run_demo(
    out: str | os.PathLike,
    config: DemoConfig = DemoConfig(),  # noqa: B008 - frozen, immutable
    *,
    log=print,
) -> DemoResult:
    """Run the whole demo into ``out`` (see the module docstring); returns the summary.

    ``out`` must be empty, new, or a previous demo's folder (its outputs are replaced).
    ``log`` receives progress lines (``print`` by default).
    """
    import torch

    threads = torch.get_num_threads()
    if config.torch_threads is not None:
        torch.set_num_threads(config.torch_threads)
    try:
        return _run_demo(Path(out), config, log)
    finally:
        torch.set_num_threads(threads)


def _run_demo(out: Path, config: DemoConfig, log) -> DemoResult:
    import pandas as pd

    from hpa_kit.folds import make_folds
    from hpa_kit.metric import score_submission
    from hpa_kit.model import load_classifier
    from hpa_kit.predict import PredictOptions, predict_folder
    from hpa_kit.submission import (
        read_sample,
        read_submission,
        validate_submission,
        write_submission,
    )
    from hpa_kit.synth import write_dataset
    from hpa_kit.train import TrainConfig, fit

    started = time.perf_counter()
    _prepare_out(out)
    stage = _Stages()
    paths: dict[str, Path] = {
        "out": out,
        "train": out / "train",
        "test": out / "test",
        "crops": out / "crops",
        "model": out / "model",
        "submission": out / "submission.csv",
        "baseline": out / "baseline.csv",
        "baseline_cell_mean": out / "baseline_cell_mean.csv",
        "truth": out / "test" / "truth.csv",
        "overlays": out / "overlays",
        "summary": out / "summary.json",
    }
    segmenter = ClassicalSegmenter(config.seg_scale, pixel_size=config.pixel_size)
    problems: dict[str, dict[str, str]] = {}

    with stage("synth", log):
        kwargs = {"size": config.size, "config": config.synth, "progress": config.progress}
        train_set = write_dataset(
            paths["train"], n=config.n_train, seed=config.seed, id_prefix="train", **kwargs
        )
        test_set = write_dataset(
            paths["test"], n=config.n_test, seed=config.seed + 1, id_prefix="test", **kwargs
        )
        for name, data in (("synth_train", train_set), ("synth_test", test_set)):
            if data.failures:
                problems[name] = dict(data.failures)

    with stage("crops", log):
        table = pd.read_csv(train_set.train_csv, dtype={"ID": str})
        table = make_folds(table, n_splits=config.n_folds, seed=config.seed)
        crops, failures = write_cell_crops(
            paths["train"] / "images",
            table,
            paths["crops"] / "images",
            segmenter=segmenter,
            size=config.input_size,
            margin=config.margin,
            channels=config.channels,
            progress=config.progress,
        )
        if failures:
            problems["crops"] = failures
        crops_csv = paths["crops"] / "crops.csv"
        crops.to_csv(crops_csv, index=False)
        if crops.empty or crops["fold"].nunique() < 2:
            raise RuntimeError(
                f"too few training crops ({len(crops)}) for a train/validation split; "
                f"failures: {failures}"
            )

    with stage("train", log):
        train_config = TrainConfig(
            train_csv=os.fspath(crops_csv),
            images_dir=os.fspath(paths["crops"] / "images"),
            out_dir=os.fspath(paths["model"]),
            fold=0,
            n_folds=config.n_folds,
            arch=config.arch,
            channels=tuple(config.channels),
            input_size=config.input_size,
            batch_size=config.batch_size,
            lr=config.lr,
            epochs=config.epochs,
            loss="bce",
            amp=False,
            seed=config.seed,
            workers=0,
            device="cpu",
            monitor="val_loss",
            progress=config.progress,
        )
        trained = fit(train_config)
        checkpoint = trained.best_dir

    with stage("predict", log):
        options = PredictOptions(
            tta=config.tta,
            num_workers=0,
            device="cpu",
            amp=False,
            progress=config.progress,
        )
        report = predict_folder(
            paths["test"] / "images",
            test_set.sample_submission,
            [checkpoint],
            out=paths["submission"],
            segmenter=segmenter,
            options=options,
        )
        if report.failures:
            problems["predict"] = dict(report.failures)
        if report.no_cells:
            problems["no_cells"] = {i: "no cell found (placeholder row)" for i in report.no_cells}
        sample = read_sample(test_set.sample_submission)
        validation = validate_submission(paths["submission"], sample)

    with stage("baseline", log):
        model, model_config = load_classifier(checkpoint, device="cpu")
        sub_df = read_submission(paths["submission"])
        image_probs = _image_level_probs(
            paths["test"] / "images", list(sub_df["ID"]), model, model_config, tta=config.tta
        )
        whole, cell_mean = {}, {}
        for row in sub_df.itertuples(index=False):
            masks, probs = submission_cells(row.PredictionString)
            if _is_placeholder(masks, (int(row.ImageHeight), int(row.ImageWidth))):
                whole[row.ID] = cell_mean[row.ID] = row.PredictionString
                continue
            whole[row.ID] = baseline_predictions(row.PredictionString, image_probs[row.ID])
            cell_mean[row.ID] = baseline_predictions(row.PredictionString, probs.mean(axis=0))
        write_submission(paths["baseline"], whole, sample)
        write_submission(paths["baseline_cell_mean"], cell_mean, sample)
        baseline_validation = validate_submission(paths["baseline"], sample)

    with stage("score", log):
        scores = {
            name: score_submission(paths[key], test_set.truth).to_dict()
            for name, key in (
                ("cells", "submission"),
                ("baseline", "baseline"),
                ("baseline_cell_mean", "baseline_cell_mean"),
            )
        }
        seg = segmentation_f1(sub_df, paths["test"] / "masks")

    with stage("overlays", log):
        truth_df = read_submission(test_set.truth)
        overlay_paths = _write_overlays(
            paths["overlays"],
            paths["test"] / "images",
            truth_df,
            sub_df,
            list(sub_df["ID"])[: config.overlays],
        )

    log_rows = trained.history
    summary = {
        "map": scores["cells"]["map"],
        "baseline_map": scores["baseline"]["map"],
        "baseline_cell_mean_map": scores["baseline_cell_mean"]["map"],
        "segmentation": seg,
        "scores": scores,
        "submission_valid": validation.ok,
        "baseline_valid": baseline_validation.ok,
        "validation_problems": {k: v for k, v in validation.problems.items()},
        "counts": {
            "train_images": len(train_set.ids),
            "train_cells_true": train_set.num_cells,
            "train_crops": len(crops),
            "test_images": len(test_set.ids),
            "test_cells_true": test_set.num_cells,
            "test_cells_found": report.cells,
        },
        "training": {
            "epochs": trained.epochs_done,
            "best_epoch": trained.best_epoch,
            "best_val_loss": trained.best_score,
            "history": [
                {k: row.get(k) for k in ("epoch", "train_loss", "val_loss", "macro_f1", "micro_f1")}
                for row in log_rows
            ],
        },
        "tta": config.tta,
        "segmenter": repr(segmenter),
        "torch_threads": config.torch_threads,
        "seconds": {**stage.seconds, "total": round(time.perf_counter() - started, 2)},
        "problems": problems,
        "paths": {k: os.fspath(v) for k, v in paths.items()}
        | {
            "checkpoint": os.fspath(checkpoint),
            "overlay_files": [os.fspath(p) for p in overlay_paths],
        },
        "config": config.to_dict(),
    }
    paths["summary"].write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return DemoResult(out=out, summary=summary, paths=paths)


def format_summary(summary: Mapping[str, Any]) -> str:
    """The printed table of a demo summary: scores, segmentation, seconds, paths."""
    seg = summary["segmentation"]
    counts = summary["counts"]
    lines = [
        "hpa-kit demo: synthetic HPA-like data, classical segmentation, CPU classifier",
        "",
        f"  {'mAP, per-cell classification (submission.csv)':<52} {summary['map']:.4f}",
        f"  {'mAP, baseline: whole-image confidence per cell':<52} {summary['baseline_map']:.4f}",
        f"  {'mAP, baseline: mean cell confidence per image':<52} "
        f"{summary['baseline_cell_mean_map']:.4f}",
        f"  {'per-cell gain over the better baseline':<52} "
        f"{summary['map'] - max(summary['baseline_map'], summary['baseline_cell_mean_map']):+.4f}",
        f"  {'segmentation F1 vs truth (IoU >= 0.6)':<52} {seg['f1']:.4f}  "
        f"({seg['tp']} of {seg['n_true']} true cells matched, {seg['n_pred']} found, "
        f"mean IoU {seg['mean_iou']:.3f})",
        f"  {'submission.csv valid':<52} {summary['submission_valid']}",
        f"  {'data':<52} {counts['train_images']} train images -> {counts['train_crops']} "
        f"crops; {counts['test_images']} test images",
        f"  {'TTA':<52} {summary['tta']}",
        "",
        "  seconds per stage: " + ", ".join(f"{k} {v:.1f}" for k, v in summary["seconds"].items()),
    ]
    if summary.get("problems"):
        lines.append("")
        lines.append("  problems (recorded, the run went on):")
        for stage, items in summary["problems"].items():
            for key, cause in items.items():
                lines.append(f"    {stage}: {key}: {cause}")
    paths = summary["paths"]
    lines += [
        "",
        "  outputs:",
        f"    submission       {paths['submission']}",
        f"    baselines        {paths['baseline']}, {paths['baseline_cell_mean']}",
        f"    truth            {paths['truth']}",
        f"    checkpoint       {paths['checkpoint']}",
        f"    overlays         {', '.join(paths['overlay_files']) or '(none)'}",
        f"    summary          {paths['summary']}",
        f"    synthetic data   {paths['train']}, {paths['test']}",
    ]
    return "\n".join(lines)

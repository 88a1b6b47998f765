"""The competition metric: mean average precision at IoU 0.6 over cell-class detections.

Rules (REFERENCE.md section 1, the host's re-implementation with the Open Images evaluator):

1. Ground truth comes in the submission's own format, one triplet ``class 1 mask`` per true
   (cell, class); its confidences are ignored. A truth triplet whose mask is empty is not a
   cell, but its class still counts as present in that image (rule 2), as in the host's
   evaluator: that image's detections of the class are then false positives, not ignored.
2. Per image, only the classes present in that image's truth are evaluated: a prediction of
   any other class is ignored (``ignore_absent_classes=True``, the default). With ``False``
   such predictions count as false positives of their class.
3. Predictions whose mask is empty are dropped.
4. Per image and class, detections are sorted by confidence, descending; no NMS.
5. Greedy matching: each detection takes the truth cell of its class with the highest IoU,
   already matched cells included (ties: the first such cell in truth order). It is a true
   positive if that IoU >= 0.6 (inclusive) and the cell is not yet matched, else a false
   positive (a second hit on a matched cell included).
6. Per class, detections are pooled over all images; every truth cell counts in recall,
   including those of truth images absent from the submission. Submission images absent
   from the truth are not evaluated.
7. AP is the all-point interpolated area: precision made non-increasing from the right,
   summed times the recall steps. A class with truth but no detection has AP 0.
8. mAP is the unweighted mean of AP over the classes that have truth.

IoU is computed on the run-length encodings (``iou="mask"``, pycocotools ``iou``) or on the
bounding boxes of the masks (``iou="bbox"``, boxes from pycocotools ``toBbox``: a box covers
whole pixels, ``[col, row, n_cols, n_rows]``). Each image's distinct mask strings are decoded
once (masks repeat once per class), the submission's a bounded number of bytes at a time, and
the files are read one row at a time (:func:`hpa_kit.submission.iter_rows`,
:class:`hpa_kit.submission.RowIndex`), so memory does not grow with the file.

Tie order. Equal confidences are ordered by a *stable* sort: within an image, in the order
of the PredictionString; across images, in the order of the truth file's rows. So a score
never depends on the numpy build or on array lengths. The host's evaluator sorts with
``np.argsort(scores)[::-1]``, whose order among equal scores is unspecified (often the input
order reversed), per image and class and again after pooling. With distinct confidences the
two agree; on tie-heavy submissions (an image-level confidence copied to every cell) the order
moves the mAP by up to about 0.01 (REFERENCE.md reports up to 0.012 against the host's
order; BENCHMARKS.md has the figure for a reversed order). Break ties yourself (distinct
confidences) if the exact host order matters.

>>> average_precision([0.9, 0.8, 0.7], [True, False, True], num_truth=2)
0.8333333333333333
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from hpa_kit.rle import RLEError, to_coco_rle
from hpa_kit.submission import (
    RowIndex,
    SubmissionError,
    SubmissionRow,
    Triplet,
    iter_rows,
    parse_prediction_string,
)

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = [
    "IOU_MODES",
    "IOU_THRESHOLD",
    "ScoreResult",
    "average_precision",
    "box_iou",
    "match_detections",
    "score_submission",
]

IOU_THRESHOLD = 0.6
IOU_MODES: tuple[str, ...] = ("mask", "bbox")


def _coco_mask():
    try:
        from pycocotools import mask as coco_mask
    except ImportError as exc:  # pragma: no cover - pycocotools is a dependency
        raise ImportError("hpa_kit.metric needs pycocotools: pip install pycocotools") from exc
    return coco_mask


# --------------------------------------------------------------------------- pure parts


def match_detections(ious: np.ndarray, *, threshold: float = IOU_THRESHOLD) -> np.ndarray:
    """True/false positive flags of detections already sorted by confidence, descending.

    ``ious`` is (detections, truth cells) of one image and class. Each detection takes the
    cell with the highest IoU (matched cells included; ties: the first); it is a true
    positive when that IoU >= ``threshold`` and the cell is not matched yet.

    >>> match_detections(np.array([[1.0, 0.8], [1.0, 0.8], [0.0, 0.6]]))
    array([ True, False,  True])
    """
    ious = np.asarray(ious, dtype=np.float64)
    if ious.ndim != 2:
        raise ValueError(f"ious must be 2-D (detections, truth), got shape {ious.shape}")
    n_det, n_gt = ious.shape
    if n_gt == 0:
        return np.zeros(n_det, dtype=bool)
    best = ious.argmax(axis=1)
    return _greedy(best, ious[np.arange(n_det), best], threshold)


def _greedy(best: np.ndarray, best_iou: np.ndarray, threshold: float) -> np.ndarray:
    """Rule 5 on each detection's best cell (-1: none) and its IoU, in score order."""
    tp = np.zeros(best.size, dtype=bool)
    matched: set[int] = set()
    for i, (g, value) in enumerate(zip(best.tolist(), best_iou.tolist(), strict=True)):
        if g >= 0 and value >= threshold and g not in matched:
            tp[i] = True
            matched.add(g)
    return tp


def average_precision(scores: Sequence[float], is_tp: Sequence[bool], *, num_truth: int) -> float:
    """All-point interpolated AP of pooled detections of one class.

    Detections are sorted by score, descending, with a stable sort (ties keep their given
    order). Precision is made non-increasing from the right and summed times the recall
    steps. ``num_truth`` must be positive; no detections give 0.

    >>> average_precision([0.9, 0.8, 0.6, 0.5], [True, False, True, False], num_truth=3)
    0.5555555555555556
    """
    if num_truth <= 0:
        raise ValueError(f"num_truth must be positive, got {num_truth}")
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    is_tp = np.asarray(is_tp, dtype=bool).reshape(-1)
    if scores.shape != is_tp.shape:
        raise ValueError(f"scores {scores.shape} and is_tp {is_tp.shape} differ in length")
    if is_tp.sum() > num_truth:
        raise ValueError(f"{int(is_tp.sum())} true positives exceed num_truth={num_truth}")
    if scores.size == 0:
        return 0.0
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(is_tp[order])
    fp = np.cumsum(~is_tp[order])
    precision = tp / (tp + fp)
    recall = tp / num_truth
    recall = np.concatenate(([0.0], recall, [1.0]))
    precision = np.concatenate(([0.0], precision, [0.0]))
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1]) + 1
    return float(np.sum((recall[steps] - recall[steps - 1]) * precision[steps]))


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """IoU matrix of boxes ``[col, row, n_cols, n_rows]`` (pycocotools ``toBbox`` layout).

    >>> box_iou(np.array([[0, 0, 2, 2]]), np.array([[1, 0, 2, 2], [5, 5, 1, 1]]))
    array([[0.33333333, 0.        ]])
    """
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    a0, a1 = a[:, None, :2], a[:, None, :2] + a[:, None, 2:]
    b0, b1 = b[None, :, :2], b[None, :, :2] + b[None, :, 2:]
    extent = np.clip(np.minimum(a1, b1) - np.maximum(a0, b0), 0.0, None)
    inter = extent[..., 0] * extent[..., 1]
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _iou_matrix(dt: list[dict], gt: list[dict], iou: str) -> np.ndarray:
    if not dt or not gt:
        return np.zeros((len(dt), len(gt)))
    coco_mask = _coco_mask()
    if iou == "bbox":
        return box_iou(coco_mask.toBbox(dt), coco_mask.toBbox(gt))
    return np.asarray(coco_mask.iou(dt, gt, [0] * len(gt)), dtype=np.float64).reshape(
        len(dt), len(gt)
    )


# --------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class ScoreResult:
    """mAP and per-class AP (classes with truth only), with the counts behind them.

    ``map`` is NaN when the truth holds no cell at all (``None`` in :meth:`to_dict`).
    ``extra_ids`` lists the first 10 000 submission ids absent from the truth;
    ``n_extra_ids`` counts them all.
    """

    map: float
    ap: dict[int, float]
    num_truth: dict[int, int]
    num_detections: dict[int, int]
    num_true_positives: dict[int, int]
    iou: str = "mask"
    iou_threshold: float = IOU_THRESHOLD
    ignore_absent_classes: bool = True
    n_images: int = 0
    missing_ids: tuple[str, ...] = ()
    extra_ids: tuple[str, ...] = field(default=())
    n_extra_ids: int = 0

    def to_dict(self) -> dict:
        """JSON-ready dict (class keys as strings)."""
        return {
            "map": None if math.isnan(self.map) else self.map,
            "ap": {str(c): v for c, v in self.ap.items()},
            "num_truth": {str(c): v for c, v in self.num_truth.items()},
            "num_detections": {str(c): v for c, v in self.num_detections.items()},
            "num_true_positives": {str(c): v for c, v in self.num_true_positives.items()},
            "iou": self.iou,
            "iou_threshold": self.iou_threshold,
            "ignore_absent_classes": self.ignore_absent_classes,
            "n_images": self.n_images,
            "missing_ids": list(self.missing_ids),
            "extra_ids": list(self.extra_ids),
            "n_extra_ids": self.n_extra_ids,
        }


@dataclass(frozen=True)
class _Options:
    iou: str
    threshold: float
    ignore_absent_classes: bool


def _triplets(text: str, row: SubmissionRow, what: str) -> list[Triplet]:
    try:
        return parse_prediction_string(text)
    except SubmissionError as exc:
        raise SubmissionError(f"{what} {row.image_id} ({row.where}): {exc}") from None


def _decoded(text: str, row: SubmissionRow, what: str) -> dict:
    try:
        return to_coco_rle(text, row.height, row.width)  # checks it covers h x w, bounded
    except RLEError as exc:
        raise SubmissionError(f"{what} {row.image_id}: mask {text[:24]!r}: {exc}") from None


def _distinct(triplets: list[Triplet]) -> tuple[list[str], np.ndarray]:
    """The distinct mask texts (first-seen order) and each triplet's index into them."""
    index: dict[str, int] = {}
    where = [index.setdefault(text, len(index)) for _, _, text in triplets]
    return list(index), np.asarray(where, dtype=np.int64)


def _rle_chunks(
    texts: list[str], row: SubmissionRow, what: str, *, n_gt: int
) -> Iterator[tuple[int, list[dict]]]:
    """``(start, rles)`` of consecutive distinct masks, decoded a bounded amount at a time:
    at most ~16 MB of counts and ~4M IoU entries per chunk, so that hostile rows (say 100
    checkerboard masks) never hold all their masks decoded at once."""
    start, chunk, size = 0, [], 0
    max_rows = max(1, _CHUNK_IOUS // max(n_gt, 1))
    for i, text in enumerate(texts):
        rle = _decoded(text, row, what)
        chunk.append(rle)
        size += len(rle["counts"])
        if size >= _CHUNK_BYTES or len(chunk) >= max_rows:
            yield start, chunk
            start, chunk, size = i + 1, [], 0
    if chunk:
        yield start, chunk


_CHUNK_BYTES = 16 * 2**20
_CHUNK_IOUS = 4 * 2**20


def _best_cells(
    preds: list[Triplet],
    truth: SubmissionRow,
    gt_rles: list[dict],
    cells: dict[int, np.ndarray],
    options: _Options,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per prediction: is its mask non-empty, its best truth cell of its class (-1: none;
    ties: the first cell in truth order) and that IoU."""
    texts, index = _distinct(preds)
    classes = np.fromiter((t[0] for t in preds), dtype=np.int64, count=len(preds))
    nonempty = np.zeros(len(preds), dtype=bool)
    best = np.full(len(preds), -1, dtype=np.int64)
    best_iou = np.zeros(len(preds))
    for start, rles in _rle_chunks(texts, truth, "submission", n_gt=len(gt_rles)):
        inside = np.flatnonzero((index >= start) & (index < start + len(rles)))
        areas = np.asarray(_coco_mask().area(rles)).reshape(-1)
        nonempty[inside] = areas[index[inside] - start] > 0
        ious = _iou_matrix(rles, gt_rles, options.iou)
        for cls, class_cells in cells.items():
            sel = inside[classes[inside] == cls]
            if sel.size == 0 or class_cells.size == 0:
                continue
            sub = ious[np.ix_(index[sel] - start, class_cells)]
            j = sub.argmax(axis=1)
            best[sel] = class_cells[j]
            best_iou[sel] = sub[np.arange(sel.size), j]
    return nonempty, best, best_iou


def _evaluate_image(
    pred_text: str, truth: SubmissionRow, options: _Options
) -> tuple[dict[int, int], dict[int, tuple[np.ndarray, np.ndarray]]]:
    """Per evaluated class: truth cell count, and (scores, is_tp) of the image's detections in
    score order (see rules 1-5)."""
    gt = _triplets(truth.prediction, truth, "truth")
    preds = _triplets(pred_text, truth, "submission")
    gt_texts, gt_index = _distinct(gt)
    gt_rles = [_decoded(text, truth, "truth") for text in gt_texts]
    gt_nonempty = np.asarray(_coco_mask().area(gt_rles)).reshape(-1) > 0 if gt_rles else []
    cells: dict[int, list[int]] = {cls: [] for cls, _, _ in gt}  # rule 1: empty masks
    for (cls, _, _), k in zip(gt, gt_index.tolist(), strict=True):  # evaluate, are no cell
        if gt_nonempty[k]:
            cells[cls].append(k)
    cell_arrays = {cls: np.asarray(ks, dtype=np.int64) for cls, ks in cells.items()}
    num_truth = {cls: len(ks) for cls, ks in cells.items()}
    if options.ignore_absent_classes:
        preds = [t for t in preds if t[0] in cells]
    if not preds:
        return num_truth, {}
    nonempty, best, best_iou = _best_cells(preds, truth, gt_rles, cell_arrays, options)
    scores_all = np.fromiter((t[1] for t in preds), dtype=np.float64, count=len(preds))
    classes = np.fromiter((t[0] for t in preds), dtype=np.int64, count=len(preds))
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for cls in np.unique(classes[nonempty]).tolist():
        sel = np.flatnonzero(nonempty & (classes == cls))  # rule 3: empty masks dropped
        order = sel[np.argsort(-scores_all[sel], kind="stable")]
        is_tp = _greedy(best[order], best_iou[order], options.threshold)
        out[cls] = (scores_all[order], is_tp)
    return num_truth, out


def _pooled_result(
    num_truth: dict[int, int], pooled: dict[int, list[tuple[np.ndarray, np.ndarray]]]
) -> tuple[float, dict[int, float], dict[int, int], dict[int, int]]:
    """(mAP, AP, detections, true positives) per class with truth (rules 6-8)."""
    ap: dict[int, float] = {}
    n_det: dict[int, int] = {}
    n_tp: dict[int, int] = {}
    for cls in sorted(c for c, n in num_truth.items() if n > 0):
        parts = pooled.get(cls, [])
        scores = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0)
        is_tp = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, dtype=bool)
        ap[cls] = average_precision(scores, is_tp, num_truth=num_truth[cls])
        n_det[cls] = int(scores.size)
        n_tp[cls] = int(is_tp.sum())
    mean = float(np.mean(list(ap.values()))) if ap else float("nan")
    return mean, ap, n_det, n_tp


def _prediction_of(row: SubmissionRow, index: RowIndex) -> str | None:
    """The submission's PredictionString for a truth row (None: the id has no row)."""
    pred = index.get(row.image_id)
    if pred is None:
        return None
    if (pred.width, pred.height) != (row.width, row.height):
        raise SubmissionError(
            f"image {row.image_id}: submission size {pred.width}x{pred.height} (width x "
            f"height, {pred.where}) differs from truth {row.width}x{row.height} ({row.where})"
        )
    return pred.prediction


def score_submission(
    submission: str | os.PathLike | pd.DataFrame,
    truth: str | os.PathLike | pd.DataFrame,
    *,
    iou: str = "mask",
    ignore_absent_classes: bool = True,
    iou_threshold: float = IOU_THRESHOLD,
    progress: bool = False,
) -> ScoreResult:
    """The competition mAP of ``submission`` against ``truth`` (both in submission format).

    ``submission`` and ``truth`` are CSV paths or DataFrames with columns
    ``ID,ImageWidth,ImageHeight,PredictionString``, read by the rules of
    :mod:`hpa_kit.submission` one row at a time (the submission is indexed by id, not held).
    ``iou`` is ``"mask"`` or ``"bbox"``; ``ignore_absent_classes`` switches rule 2 (see the
    module docstring). An image's sizes must agree between the two files. Raises
    :class:`hpa_kit.submission.SubmissionError` (naming the file, line or id) on a malformed
    row of an evaluated image; run :func:`hpa_kit.submission.validate_submission` first for a
    full report.

    >>> import pandas as pd
    >>> from hpa_kit.rle import encode_binary_mask
    >>> cell = encode_binary_mask(np.array([[1, 1, 0], [1, 1, 0]], dtype=bool))
    >>> truth = pd.DataFrame({"ID": ["img"], "ImageWidth": [3], "ImageHeight": [2],
    ...                       "PredictionString": [f"0 1 {cell} 5 1 {cell}"]})
    >>> result = score_submission(truth.assign(PredictionString=f"0 0.9 {cell} 3 0.8 {cell}"),
    ...                           truth)
    >>> result.map, result.ap  # class 0 found; class 5 missed; class 3 not in the truth
    (0.5, {0: 1.0, 5: 0.0})
    """
    if iou not in IOU_MODES:
        raise ValueError(f"iou must be one of {IOU_MODES}, got {iou!r}")
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    options = _Options(iou, iou_threshold, ignore_absent_classes)
    truth_ids = {row.image_id for row in iter_rows(truth, what="truth")}  # checks the table
    num_truth: dict[int, int] = {}
    pooled: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
    missing: list[str] = []
    with RowIndex(submission, keep=truth_ids) as index:
        rows = iter_rows(truth, what="truth")
        if progress:
            from hpa_kit.progress import progress_bar

            rows = progress_bar(rows, total=len(truth_ids), desc="score", unit="image")
        for row in rows:  # truth order: the order of equal confidences across images
            pred_text = _prediction_of(row, index)
            if pred_text is None:
                missing.append(row.image_id)
            counts, dets = _evaluate_image(pred_text or "", row, options)
            for cls, n in counts.items():
                num_truth[cls] = num_truth.get(cls, 0) + n
            for cls, pair in dets.items():
                pooled.setdefault(cls, []).append(pair)
    mean, ap, n_det, n_tp = _pooled_result(num_truth, pooled)
    return ScoreResult(
        map=mean,
        ap=ap,
        num_truth={c: n for c, n in sorted(num_truth.items()) if n > 0},
        num_detections=n_det,
        num_true_positives=n_tp,
        iou=iou,
        iou_threshold=iou_threshold,
        ignore_absent_classes=ignore_absent_classes,
        n_images=len(truth_ids),
        missing_ids=tuple(missing),
        extra_ids=tuple(index.other_ids),
        n_extra_ids=index.n_other,
    )

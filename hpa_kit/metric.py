"""The competition metric: mean average precision at IoU 0.6 over cell-class detections.

Rules (REFERENCE.md section 1, the host's re-implementation with the Open Images evaluator):

1. Ground truth comes in the submission's own format, one triplet ``class 1 mask`` per true
   (cell, class); its confidences are ignored. Truth masks that are empty are dropped.
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
once (masks repeat once per class) and one IoU matrix is computed per image.

Ties in confidence are broken deterministically with a *stable* sort: within an image, the
order of the PredictionString; across images, the order of the truth file's rows. (The Open
Images evaluator sorts with ``np.argsort(scores)[::-1]``, whose order among equal scores is
not specified; with distinct confidences the two agree.)

>>> average_precision([0.9, 0.8, 0.7], [True, False, True], num_truth=2)
0.8333333333333333
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from hpa_kit.labels import NUM_CLASSES
from hpa_kit.rle import RLEError, to_coco_rle
from hpa_kit.submission import SubmissionError, parse_prediction_string, read_submission

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
    tp = np.zeros(n_det, dtype=bool)
    if n_gt == 0:
        return tp
    best = ious.argmax(axis=1)
    best_iou = ious[np.arange(n_det), best]
    matched = np.zeros(n_gt, dtype=bool)
    for i in range(n_det):
        g = best[i]
        if best_iou[i] >= threshold and not matched[g]:
            tp[i] = True
            matched[g] = True
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
        }


def _distinct_rles(
    triplets: list[tuple[int, float, str]], height: int, width: int, image_id: str, what: str
) -> tuple[list[dict], list[int], set[int]]:
    """RLEs of the distinct masks (each decoded once), each triplet's mask index, empty ones."""
    index: dict[str, int] = {}
    rles: list[dict] = []
    where: list[int] = []
    for _, _, text in triplets:
        k = index.get(text)
        if k is None:
            k = index[text] = len(rles)
            try:
                rles.append(to_coco_rle(text, height, width))  # checks it covers h x w
            except RLEError as exc:
                raise SubmissionError(f"{what} {image_id}: mask {k}: {exc}") from None
        where.append(k)
    if not rles:
        return rles, where, set()
    areas = np.asarray(_coco_mask().area(rles)).reshape(-1)
    return rles, where, set(np.flatnonzero(areas == 0).tolist())


def _check_classes(triplets: list[tuple[int, float, str]], image_id: str, what: str) -> None:
    for cls, conf, _ in triplets:
        if not 0 <= cls < NUM_CLASSES:
            raise SubmissionError(f"{what} {image_id}: class {cls} out of range 0..18")
        if what == "submission" and not (math.isfinite(conf) and 0.0 <= conf <= 1.0):
            raise SubmissionError(f"{what} {image_id}: confidence {conf} not in [0, 1]")


def _evaluate_image(
    pred_text: str,
    truth_text: str,
    height: int,
    width: int,
    image_id: str,
    *,
    iou: str,
    threshold: float,
    ignore_absent_classes: bool,
) -> tuple[dict[int, int], dict[int, tuple[np.ndarray, np.ndarray]]]:
    """Per class: truth count, and (scores, is_tp) of the image's detections in score order."""
    try:
        truth = parse_prediction_string(truth_text)
        preds = parse_prediction_string(pred_text)
    except SubmissionError as exc:
        raise SubmissionError(f"image {image_id}: {exc}") from None
    _check_classes(truth, image_id, "truth")
    _check_classes(preds, image_id, "submission")

    gt_rles, gt_where, gt_empty = _distinct_rles(truth, height, width, image_id, "truth")
    gt_by_class: dict[int, list[int]] = {}
    for (cls, _, _), k in zip(truth, gt_where, strict=True):
        if k not in gt_empty:
            gt_by_class.setdefault(cls, []).append(k)
    num_truth = {cls: len(cells) for cls, cells in gt_by_class.items()}

    if ignore_absent_classes:
        preds = [t for t in preds if t[0] in gt_by_class]
    dt_rles, dt_where, dt_empty = _distinct_rles(preds, height, width, image_id, "submission")
    dets_by_class: dict[int, list[tuple[float, int]]] = {}
    for (cls, conf, _), k in zip(preds, dt_where, strict=True):
        if k not in dt_empty:
            dets_by_class.setdefault(cls, []).append((conf, k))
    if not dets_by_class:
        return num_truth, {}

    ious = _iou_matrix(dt_rles, gt_rles, iou)
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for cls, dets in dets_by_class.items():
        scores = np.fromiter((d[0] for d in dets), dtype=np.float64, count=len(dets))
        masks = np.fromiter((d[1] for d in dets), dtype=np.int64, count=len(dets))
        order = np.argsort(-scores, kind="stable")
        scores, masks = scores[order], masks[order]
        cells = gt_by_class.get(cls)
        if cells:
            is_tp = match_detections(ious[np.ix_(masks, cells)], threshold=threshold)
        else:
            is_tp = np.zeros(len(scores), dtype=bool)
        out[cls] = (scores, is_tp)
    return num_truth, out


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
    ``ID,ImageWidth,ImageHeight,PredictionString``. ``iou`` is ``"mask"`` or ``"bbox"``;
    ``ignore_absent_classes`` switches rule 2 (see the module docstring). An image's sizes
    must agree between the two files. Raises :class:`hpa_kit.submission.SubmissionError`
    (naming the id) on a malformed row; run :func:`hpa_kit.submission.validate_submission`
    first for a full report.

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
    sub = read_submission(submission)
    ref = read_submission(truth)
    sub_rows = {
        image_id: (int(w), int(h), text)
        for image_id, w, h, text in sub.loc[
            :, ["ID", "ImageWidth", "ImageHeight", "PredictionString"]
        ].itertuples(index=False, name=None)
    }
    num_truth: dict[int, int] = {}
    pooled: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
    missing: list[str] = []
    rows = ref.loc[:, ["ID", "ImageWidth", "ImageHeight", "PredictionString"]].itertuples(
        index=False, name=None
    )
    if progress:
        from hpa_kit.progress import progress_bar

        rows = progress_bar(rows, total=len(ref), desc="score", unit="image")
    for image_id, width, height, truth_text in rows:
        width, height = int(width), int(height)
        if image_id in sub_rows:
            sub_w, sub_h, pred_text = sub_rows[image_id]
            if (sub_w, sub_h) != (width, height):
                raise SubmissionError(
                    f"image {image_id}: submission size {sub_w}x{sub_h} (width x height) "
                    f"differs from truth {width}x{height}"
                )
        else:
            missing.append(image_id)
            pred_text = ""
        counts, dets = _evaluate_image(
            pred_text,
            truth_text,
            height,
            width,
            image_id,
            iou=iou,
            threshold=iou_threshold,
            ignore_absent_classes=ignore_absent_classes,
        )
        for cls, n in counts.items():
            num_truth[cls] = num_truth.get(cls, 0) + n
        for cls, pair in dets.items():
            pooled.setdefault(cls, []).append(pair)

    truth_ids = set(ref["ID"])
    extra = tuple(i for i in sub["ID"] if i not in truth_ids)
    ap: dict[int, float] = {}
    n_det: dict[int, int] = {}
    n_tp: dict[int, int] = {}
    for cls in sorted(num_truth):
        parts = pooled.get(cls, [])
        scores = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0)
        is_tp = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, dtype=bool)
        ap[cls] = average_precision(scores, is_tp, num_truth=num_truth[cls])
        n_det[cls] = int(scores.size)
        n_tp[cls] = int(is_tp.sum())
    mean = float(np.mean(list(ap.values()))) if ap else float("nan")
    return ScoreResult(
        map=mean,
        ap=ap,
        num_truth=dict(sorted(num_truth.items())),
        num_detections=n_det,
        num_true_positives=n_tp,
        iou=iou,
        iou_threshold=iou_threshold,
        ignore_absent_classes=ignore_absent_classes,
        n_images=len(ref),
        missing_ids=tuple(missing),
        extra_ids=extra,
    )

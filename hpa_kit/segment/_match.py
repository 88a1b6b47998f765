"""Matching two label images by IoU (for measuring a segmentation against a reference)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["Matching", "match_labels"]


class Matching(NamedTuple):
    """Result of :func:`match_labels`. Precision and recall are 0 when undefined."""

    threshold: float
    n_true: int
    n_pred: int
    tp: int
    precision: float
    recall: float
    f1: float
    mean_iou: float  # mean IoU of the matched pairs (0 when none)


def match_labels(truth: np.ndarray, pred: np.ndarray, *, threshold: float = 0.5) -> Matching:
    """One-to-one matching of the objects of two label images at IoU >= ``threshold``.

    Pairs are taken greedily by decreasing IoU (for ``threshold`` > 0.5 every candidate pair
    is already unique). Labels need not be consecutive; 0 is background.

    Two 2x4 squares, shifted by one column (IoU 6/10), and a perfect 1x2 match:

    >>> truth = np.zeros((4, 8), np.int32); pred = np.zeros((4, 8), np.int32)
    >>> truth[0:2, 0:4] = 1; pred[0:2, 1:5] = 5; truth[3, 6:8] = 2; pred[3, 6:8] = 7
    >>> m = match_labels(truth, pred)
    >>> m.tp, m.precision, m.recall, round(m.mean_iou, 4)
    (2, 1.0, 1.0, 0.8)
    >>> match_labels(truth, pred, threshold=0.7).tp
    1
    """
    if truth.shape != pred.shape or truth.ndim != 2:
        raise ValueError(
            f"need two 2-D label images of one shape, got {truth.shape} and {pred.shape}"
        )
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    true_ids, true_inv = np.unique(truth, return_inverse=True)
    pred_ids, pred_inv = np.unique(pred, return_inverse=True)
    n_t, n_p = len(true_ids), len(pred_ids)
    joint = np.bincount(true_inv.ravel() * n_p + pred_inv.ravel(), minlength=n_t * n_p)
    joint = joint.reshape(n_t, n_p).astype(np.float64)
    # drop the background row / column
    true_fg, pred_fg = true_ids != 0, pred_ids != 0
    area_t, area_p = joint.sum(1), joint.sum(0)
    inter = joint[true_fg][:, pred_fg]
    union = area_t[true_fg][:, None] + area_p[pred_fg][None, :] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    n_true, n_pred = int(true_fg.sum()), int(pred_fg.sum())
    rows, cols = np.nonzero(iou >= threshold)
    order = np.argsort(-iou[rows, cols], kind="stable")
    used_t, used_p, matched = set(), set(), []
    for k in order:
        r, c = int(rows[k]), int(cols[k])
        if r not in used_t and c not in used_p:
            used_t.add(r)
            used_p.add(c)
            matched.append(iou[r, c])
    tp = len(matched)
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_true if n_true else 0.0
    f1 = 2 * tp / (n_true + n_pred) if n_true + n_pred else 0.0
    mean_iou = float(np.mean(matched)) if matched else 0.0
    return Matching(threshold, n_true, n_pred, tp, precision, recall, f1, mean_iou)

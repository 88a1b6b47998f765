"""Matching label images by IoU (for measuring a segmentation against a reference).

:func:`match_labels` matches the objects of one image pair; :func:`match_dataset` pools the
matches of many pairs into one score (as stardist's ``matching`` / ``matching_dataset``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import numpy as np

__all__ = ["Matching", "match_dataset", "match_labels"]


class Matching(NamedTuple):
    """Result of :func:`match_labels` (one image pair) and :func:`match_dataset` (counts summed
    over ``n_images`` pairs, then the ratios of the sums). Ratios are 0 when undefined."""

    threshold: float
    n_true: int
    n_pred: int
    tp: int
    precision: float
    recall: float
    f1: float
    mean_iou: float  # mean IoU of the matched pairs (0 when none)
    n_images: int = 1


def _matching(
    threshold: float, n_true: int, n_pred: int, tp: int, mean_iou: float, n_images: int
) -> Matching:
    """The :class:`Matching` of these counts (the one home of the ratios)."""
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_true if n_true else 0.0
    f1 = 2 * tp / (n_true + n_pred) if n_true + n_pred else 0.0
    return Matching(threshold, n_true, n_pred, tp, precision, recall, f1, mean_iou, n_images)


def _compact(labels: np.ndarray) -> np.ndarray:
    """The labels themselves when ids are small; otherwise ids renumbered 1..K (0 kept)."""
    if labels.max(initial=0) <= 65535:
        return labels
    ids, inverse = np.unique(labels, return_inverse=True)
    return inverse.reshape(labels.shape) + (0 if ids[0] == 0 else 1)


def _joint_histogram(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Pixel counts per (true id, predicted id), rows and columns indexed by compact ids with
    0 = background first; ids absent from an image get all-zero rows / columns."""
    if not (np.issubdtype(truth.dtype, np.integer) and np.issubdtype(pred.dtype, np.integer)):
        raise ValueError(f"label images must be integer, got {truth.dtype} and {pred.dtype}")
    if truth.size and (truth.min() < 0 or pred.min() < 0):
        raise ValueError("label images must not hold negative labels")
    true_inv, pred_inv = _compact(truth), _compact(pred)
    n_t, n_p = int(true_inv.max(initial=0)) + 1, int(pred_inv.max(initial=0)) + 1
    flat = true_inv.ravel().astype(np.int64) * n_p + pred_inv.ravel()
    return np.bincount(flat, minlength=n_t * n_p).reshape(n_t, n_p).astype(np.float64)


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
    joint = _joint_histogram(truth, pred)
    area_t, area_p = joint.sum(1), joint.sum(0)
    true_fg = area_t > 0
    pred_fg = area_p > 0
    true_fg[0] = pred_fg[0] = False  # background row / column
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
    mean_iou = float(np.mean(matched)) if matched else 0.0
    return _matching(threshold, n_true, n_pred, len(matched), mean_iou, 1)


def match_dataset(
    pairs: Iterable[tuple[np.ndarray, np.ndarray]], *, threshold: float = 0.5
) -> Matching:
    """Pooled one-to-one matching of many ``(truth, pred)`` label image pairs.

    Each pair is matched on its own (:func:`match_labels`); true objects, predicted objects
    and matches are summed over the pairs before precision, recall and F1 are taken, so a
    large image weighs by its number of objects, not as one image. ``pairs`` may be a
    generator (label images are read one pair at a time).

    The two images of :func:`match_labels`'s example (2 of 2 matched, IoU 0.6 and 1.0) and an
    image whose one true cell was missed:

    >>> truth = np.zeros((4, 8), np.int32); pred = np.zeros((4, 8), np.int32)
    >>> truth[0:2, 0:4] = 1; pred[0:2, 1:5] = 5; truth[3, 6:8] = 2; pred[3, 6:8] = 7
    >>> missed = np.zeros((4, 8), np.int32); missed[1:3, 1:3] = 1
    >>> m = match_dataset([(truth, pred), (missed, np.zeros_like(missed))])
    >>> m.n_images, m.n_true, m.n_pred, m.tp, m.precision, round(m.recall, 4), m.f1
    (2, 3, 2, 2, 1.0, 0.6667, 0.8)
    >>> round(m.mean_iou, 4)
    0.8
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    n_images = tp = n_true = n_pred = 0
    iou_sum = 0.0
    for truth, pred in pairs:
        match = match_labels(truth, pred, threshold=threshold)
        n_images += 1
        tp += match.tp
        n_true += match.n_true
        n_pred += match.n_pred
        iou_sum += match.mean_iou * match.tp
    return _matching(threshold, n_true, n_pred, tp, iou_sum / tp if tp else 0.0, n_images)

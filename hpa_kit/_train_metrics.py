"""Validation F1 scores of multi-label predictions (numpy only)."""

from __future__ import annotations

import numpy as np

__all__ = ["f1_scores"]


def f1_scores(
    probs: np.ndarray, targets: np.ndarray, *, threshold: float = 0.5
) -> dict[str, float | list[float | None] | None]:
    """Per-class, macro and micro F1 of ``probs >= threshold`` against multi-hot ``targets``.

    Per class: ``F1 = 2 TP / (2 TP + FP + FN)``; ``None`` where the class has neither a
    positive nor a predicted positive (0 / 0). ``macro_f1``: mean of the per-class F1 over
    the classes with at least one positive in ``targets`` (a class absent from validation
    neither helps nor hurts; ``None`` when no class has a positive). ``micro_f1``: the same
    formula on TP, FP, FN summed over all classes.

    >>> p = np.array([[0.9, 0.2, 0.0], [0.6, 0.7, 0.0], [0.1, 0.4, 0.0]])
    >>> t = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]])
    >>> out = f1_scores(p, t)
    >>> out["per_class_f1"], out["macro_f1"], out["micro_f1"]
    ([0.5, 0.6666666666666666, None], 0.5833333333333333, 0.5714285714285714)
    """
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets)
    if probs.shape != targets.shape or probs.ndim != 2:
        raise ValueError(
            f"probs and targets must be equal 2-D shapes, got {probs.shape} and {targets.shape}"
        )
    pred = probs >= threshold
    truth = targets >= 0.5
    tp = np.sum(pred & truth, axis=0)
    fp = np.sum(pred & ~truth, axis=0)
    fn = np.sum(~pred & truth, axis=0)
    denom = 2 * tp + fp + fn
    per_class: list[float | None] = [
        float(2 * a / d) if d > 0 else None
        for a, d in zip(tp.tolist(), denom.tolist(), strict=True)
    ]
    present = (tp + fn) > 0
    macro = (
        float(np.mean([per_class[i] for i in np.flatnonzero(present)])) if present.any() else None
    )
    total = int(denom.sum())
    micro = float(2 * tp.sum() / total) if total > 0 else None
    return {
        "macro_f1": macro,
        "micro_f1": micro,
        "per_class_f1": per_class,
        "classes_in_val": int(present.sum()),
    }

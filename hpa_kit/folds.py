"""Multi-label stratified K-fold split of a training table (one row per image).

The table has an image id column and a label column of ``"8|5|0"`` strings (as ``train.csv``).
:func:`make_folds` returns a copy with an ``int`` column ``fold`` in ``0..n_splits-1``, computed
with ``MultilabelStratifiedKFold`` (iterative stratification, package
``iterative-stratification``) with shuffling seeded by ``seed``: the same table and seed give the
same folds. Iterative stratification balances the per-class counts first and the fold sizes
second: on the competition's ``train.csv`` (21,806 images, seed 0) every class has ``floor`` or
``ceil`` of ``count / 5`` images in each fold, but the fold sizes are 4342, 4412, 4353, 4325,
4374 (up to 1.2 % from ``21806 / 5``, max - min = 87 = 2 % of the mean). By default
(``balance=True``) :func:`balance_folds` then moves the fewest rows (63) from over-full to
under-full folds and exchanges a few rows between folds, chosen so that the class counts stay
balanced: the sizes become 4361, 4362, 4361, 4361, 4361 (``floor`` / ``ceil`` of
``21806 / 5``), every class still has ``floor`` or ``ceil`` of ``count / 5`` images per fold
(max deviation 0.8 image, as before; class 18: 6 or 7, class 11: 15 or 16), 103 rows (0.47 %)
change fold, in about 0.2 s on top of the split. Folds whose sizes already differ by at
most one (as in the example below) are not changed.

>>> import pandas as pd
>>> df = pd.DataFrame({"ID": list("abcdef"), "Label": ["0", "0", "0|1", "0|1", "1", "1"]})
>>> out = make_folds(df, n_splits=2, seed=0)
>>> sorted(out["fold"].value_counts().tolist())
[3, 3]
>>> out["fold"].equals(make_folds(df, n_splits=2, seed=0, balance=False)["fold"])
True
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from hpa_kit.labels import NUM_CLASSES, LabelError, class_index, parse_label_list

__all__ = ["balance_folds", "canonical_labels", "label_matrix", "make_folds"]

_SEPARATORS = re.compile(r"[|,]")


def canonical_labels(text: str) -> str:
    """A label string with ascending, unique classes joined by ``|``.

    Accepts ``|`` or ``,`` between classes, surrounding spaces and repeated classes: the
    competition's ``train.csv`` has 146 rows such as ``"13|13"`` and ``"13|0|13"``, and the
    public HPA list maps several location names to one class. Each class is ``0`` .. ``18``
    written plainly (:func:`hpa_kit.labels.class_index`: not ``01``, ``+1`` or ``1_0``). Raises
    :class:`~hpa_kit.labels.LabelError` for an empty string or any other class token.

    >>> canonical_labels("13|0|13")
    '0|13'
    >>> canonical_labels(" 16, 0 ")
    '0|16'
    """
    if not isinstance(text, str):
        raise LabelError(f"label string must be str, got {type(text).__name__}: {text!r}")
    if not text.strip():
        raise LabelError("empty label string; an image needs at least one class")
    classes: set[int] = set()
    for part in _SEPARATORS.split(text):
        token = part.strip()
        value = class_index(token)
        if value is None:
            raise LabelError(f"bad class {token!r} in label string {text!r}: expected 0..18")
        classes.add(value)
    return "|".join(str(c) for c in sorted(classes))


def label_matrix(labels: pd.Series | list[str]) -> np.ndarray:
    """``(N, 19)`` uint8 multi-hot matrix of label strings; errors name the row.

    Repeated classes are accepted (see :func:`canonical_labels`).

    >>> label_matrix(["0|2", "18|18"]).nonzero()
    (array([0, 0, 1]), array([ 0,  2, 18]))
    """
    values = list(labels)
    out = np.zeros((len(values), NUM_CLASSES), dtype=np.uint8)
    for row, text in enumerate(values):
        try:
            out[row, parse_label_list(canonical_labels(text))] = 1
        except LabelError as exc:
            raise LabelError(f"row {row}: {exc}") from exc
    return out


def make_folds(
    df: pd.DataFrame,
    *,
    n_splits: int = 5,
    seed: int = 0,
    label_col: str = "Label",
    balance: bool = True,
) -> pd.DataFrame:
    """A copy of ``df`` (same rows, same order) with an int column ``fold`` (0..n_splits-1).

    With ``balance=True`` (the default) the folds of the iterative stratification are then
    passed through :func:`balance_folds`, so that every fold has ``floor`` or ``ceil`` of
    ``len(df) / n_splits`` rows; folds that already do are left unchanged. ``balance=False``
    gives the raw ``MultilabelStratifiedKFold`` folds.

    Raises ``ValueError`` when ``label_col`` is missing, ``n_splits < 2`` or there are fewer
    rows than folds, and :class:`~hpa_kit.labels.LabelError` naming the row of a bad label.
    """
    try:
        from iterstrat.ml_stratifiers import MultilabelStratifiedKFold
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "make_folds needs the iterative-stratification package: "
            "pip install iterative-stratification"
        ) from exc

    if label_col not in df.columns:
        raise ValueError(f"column {label_col!r} not in the table (columns: {list(df.columns)})")
    n_splits = _check_n_splits(n_splits)
    if len(df) < n_splits:
        raise ValueError(f"cannot split {len(df)} rows into {n_splits} folds")

    y = label_matrix(df[label_col])
    splitter = MultilabelStratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    fold = np.full(len(df), -1, dtype=np.int64)
    for index, (_, val_rows) in enumerate(splitter.split(np.zeros((len(df), 1)), y)):
        fold[val_rows] = index
    if (fold < 0).any():  # pragma: no cover - the splitter covers every row
        raise RuntimeError("MultilabelStratifiedKFold left rows without a fold")
    if balance:
        fold = balance_folds(fold, y, n_splits=n_splits)
    out = df.copy()
    out["fold"] = fold.astype(int)
    return out


def balance_folds(folds: np.ndarray, y: np.ndarray, *, n_splits: int) -> np.ndarray:
    """Move the fewest rows so that every fold has ``floor`` or ``ceil`` of ``N / n_splits`` rows.

    ``folds``: ``(N,)`` ints in ``0..n_splits-1``; ``y``: ``(N, C)`` 0/1 label matrix. Returns a
    new ``int64`` array; the input is not modified. Folds whose sizes already differ by at most
    one are returned unchanged (as a copy).

    The class balance is measured by the chi-square statistic of the fold-by-class table, i.e.
    ``sum(D[f, c] ** 2 / count_c)`` where ``D[f, c]`` is the count of class ``c`` in fold ``f``
    minus ``count_c / n_splits``: one image too many weighs more for a rare class. Two greedy
    steps keep it low:

    1. *Moves.* The ``N % n_splits`` larger target sizes go to the currently largest folds
       (ties: lower fold index), so exactly ``sum(max(size - target, 0))`` rows move, one at a
       time, each from a fold above its target to a fold below it. Moving a row with classes
       ``S`` from fold ``s`` to fold ``d`` changes the statistic by ``sum over c in S of
       2 (D[d, c] - D[s, c] + 1) / count_c``; the move with the smallest change is made, so
       rows whose classes are over-represented in the source and under-represented in the
       destination go first, and rows with few (and common) classes before others.
    2. *Swaps.* Moves alone cannot keep every class balanced (an over-full fold has about as
       many labels as the others, spread over more images), so rows of two folds are then
       exchanged one for one, best exchange first, while an exchange lowers the statistic
       (at most ``N`` exchanges); e.g. a ``{b}`` row of a fold one ``a`` short for an
       ``{a, b}`` row of a fold with one ``a`` too many.

    Ties (differences under 1e-9) go to the lowest row index, then the lowest destination
    fold: the result is deterministic. Work is done per label set (on ``train.csv``, 21,806
    rows have 372 label sets), vectorised over sets and folds.

    >>> y = np.array([[1, 0], [0, 1], [0, 1], [1, 0], [1, 0], [1, 0]])  # classes {0} or {1}
    >>> balance_folds(np.array([0, 0, 0, 0, 1, 1]), y, n_splits=2).tolist()  # row 1 moves
    [0, 1, 0, 0, 1, 1]
    """
    k = _check_n_splits(n_splits)
    fold = np.array(folds, dtype=np.int64, copy=True)
    bits = (np.asarray(y) != 0).astype(np.int64)
    if fold.ndim != 1 or bits.ndim != 2 or len(bits) != len(fold):
        raise ValueError(
            f"folds must be (N,) and y (N, C); got folds {fold.shape} and y {bits.shape}"
        )
    if len(fold) and (fold.min() < 0 or fold.max() >= k):
        raise ValueError(f"fold values must be in 0..{k - 1}, got {fold.min()}..{fold.max()}")
    sizes = np.bincount(fold, minlength=k)
    if sizes.max() - sizes.min() <= 1:
        return fold
    state = _Balance.of(fold, bits, k)
    _move_rows(state, sizes)
    _swap_rows(state)
    return state.fold


@dataclass
class _Balance:
    """Folds being balanced, with the per-label-set indexes both greedy steps update.

    ``patterns`` (P, C): the distinct label sets; ``pattern`` (N,): each row's set;
    ``rows_of[p]``: the rows of set p; ``first[f, p]``: the lowest row of set p in fold f
    (``n`` when there is none); ``dev = k * D`` in integers; ``weight``: ``1 / count_c``
    (0 for an absent class).
    """

    fold: np.ndarray
    k: int
    patterns: np.ndarray
    pattern: np.ndarray
    rows_of: list[np.ndarray]
    first: np.ndarray
    dev: np.ndarray
    weight: np.ndarray

    @classmethod
    def of(cls, fold: np.ndarray, bits: np.ndarray, k: int) -> _Balance:
        n = len(fold)
        patterns, pattern = _label_sets(bits)
        rows_of = np.split(np.argsort(pattern, kind="stable"), np.cumsum(np.bincount(pattern))[:-1])
        first = np.full((k, len(patterns)), n, dtype=np.int64)
        np.minimum.at(first, (fold, pattern), np.arange(n))
        dev = np.zeros((k, bits.shape[1]), dtype=np.int64)
        np.add.at(dev, fold, k * bits)
        totals = bits.sum(axis=0)
        dev -= totals
        weight = np.divide(1.0, totals, out=np.zeros(len(totals)), where=totals > 0)
        return cls(fold, k, patterns, pattern, rows_of, first, dev, weight)

    @property
    def n(self) -> int:
        return len(self.fold)

    def relocate(self, row: int, dest: int) -> None:
        """Move ``row`` to fold ``dest`` and update the indexes."""
        src, p = self.fold[row], self.pattern[row]
        self.fold[row] = dest
        self.dev[src] -= self.k * self.patterns[p]
        self.dev[dest] += self.k * self.patterns[p]
        self.first[dest, p] = min(self.first[dest, p], row)
        if self.first[src, p] == row:
            left = self.rows_of[p][self.fold[self.rows_of[p]] == src]
            self.first[src, p] = left[0] if len(left) else self.n


def _move_rows(state: _Balance, sizes: np.ndarray) -> None:
    """Step 1 of :func:`balance_folds`: the cheapest moves until every fold has its target."""
    k, n, dev, first, fold = state.k, state.n, state.dev, state.first, state.fold
    target = np.full(k, n // k, dtype=np.int64)
    target[np.argsort(-sizes, kind="stable")[: n % k]] += 1
    while (excess := np.bincount(fold, minlength=k) - target).max() > 0:
        sinks = np.flatnonzero(excess < 0)
        best = None  # (cost, row, destination)
        for src in np.flatnonzero(excess > 0):
            # cost[p, j]: change of the statistic (in units of 2 / k) when a row of set p
            # moves from src to sinks[j].
            cost = _ties(state.patterns @ ((dev[sinks] - dev[src] + k) * state.weight).T)
            cost[first[src] == n] = np.inf
            rows = np.broadcast_to(first[src][:, None], cost.shape)
            dests = np.broadcast_to(sinks[None, :], cost.shape)
            i = np.lexsort((dests.ravel(), rows.ravel(), cost.ravel()))[0]
            candidate = (float(cost.flat[i]), int(rows.flat[i]), int(dests.flat[i]))
            best = candidate if best is None or candidate < best else best
        state.relocate(best[1], best[2])


def _swap_rows(state: _Balance) -> None:
    """Step 2 of :func:`balance_folds`: the best one-for-one exchanges while they help."""
    k, n, patterns, weight = state.k, state.n, state.patterns, state.weight
    # cost[p, q] (units of 2 / k) of trading a row of set p in fold f for a row of set q in
    # fold g: with v = P_p - P_q, sum_c w_c (v_c k (D[g, c] - D[f, c]) + k v_c ** 2).
    square = patterns @ weight
    base = k * (square[:, None] + square[None, :] - 2 * (patterns * weight) @ patterns.T)
    pairs = [(f, g) for f in range(k) for g in range(f + 1, k)]
    for _ in range(n):  # each exchange lowers the statistic: this bound is never reached
        best = None  # (cost, row in f, row in g)
        for f, g in pairs:
            here, there = state.first[f] < n, state.first[g] < n
            gap = (state.dev[g] - state.dev[f]) * weight
            cost = _ties(
                base[np.ix_(here, there)]
                + (patterns[here] @ gap)[:, None]
                - (patterns[there] @ gap)[None, :]
            )
            low = cost.min()
            if low >= 0 or (best is not None and low > best[0]):
                continue
            a, b = np.nonzero(cost == low)
            row_f, row_g = state.first[f][here][a], state.first[g][there][b]
            i = np.lexsort((row_g, row_f))[0]
            candidate = (float(low), int(row_f[i]), int(row_g[i]))
            best = candidate if best is None or candidate < best else best
        if best is None:
            return
        _, row_f, row_g = best
        f, g = state.fold[row_f], state.fold[row_g]
        state.relocate(row_f, g)
        state.relocate(row_g, f)


def _label_sets(bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows of a 0/1 matrix and the index of each row's (``np.unique`` on bit codes)."""
    if bits.shape[1] > 62:  # pragma: no cover - hpa_kit has 19 classes
        sets, index = np.unique(bits, axis=0, return_inverse=True)
        return sets, index.reshape(-1)
    columns = np.arange(bits.shape[1], dtype=np.int64)
    codes, index = np.unique(bits @ (1 << columns), return_inverse=True)
    return (codes[:, None] >> columns) & 1, index.reshape(-1)


def _ties(cost: np.ndarray) -> np.ndarray:
    """Costs rounded to 1e-9, so that equal costs computed in different orders tie exactly."""
    return np.round(cost, 9) + 0.0  # + 0.0 turns -0.0 into 0.0


def _check_n_splits(n_splits: int) -> int:
    if isinstance(n_splits, bool) or not isinstance(n_splits, (int, np.integer)) or n_splits < 2:
        raise ValueError(f"n_splits must be an integer >= 2, got {n_splits!r}")
    return int(n_splits)

"""Building, writing and validating the competition's ``submission.csv``.

Data contract
-------------
- A submission is a CSV with columns ``ID,ImageWidth,ImageHeight,PredictionString`` and one
  row per test image (any order, every id exactly once).
- A PredictionString is a space-separated list of triplets ``class confidence mask``:
  ``class`` an integer 0..18, ``confidence`` a finite number in [0, 1], ``mask`` the
  REFERENCE.md section 1 encoding of a boolean ``ImageHeight x ImageWidth`` mask
  (:mod:`hpa_kit.rle`). A cell with several classes repeats its mask once per class.
- An image with no cells (or whose processing failed) gets the placeholder
  ``0 1 <empty mask>``, as in the competition's ``sample_submission.csv``. An empty
  PredictionString is reported as a problem by :func:`validate_submission`.
- Confidences are written by :func:`format_confidence`: 6 significant digits, positional
  notation (never ``1e-05``), trailing zeros trimmed: ``0.5``, ``1``, ``0.123457``,
  ``0.0000123457``. Six digits keep every ranking that matters (the metric only sorts them).

>>> format_prediction_string([(3, 0.25, "eNoLCAgIMAEABJkBdQ=="), (16, 1.0, "eNoLCAgIMAEABJkBdQ==")])
'3 0.25 eNoLCAgIMAEABJkBdQ== 16 1 eNoLCAgIMAEABJkBdQ=='
>>> parse_prediction_string("3 0.25 eNoLCAgIMAEABJkBdQ==")
[(3, 0.25, 'eNoLCAgIMAEABJkBdQ==')]
>>> placeholder_prediction_string(2048, 2048)
'0 1 eNoLCAgIMAEABJkBdQ=='
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hpa_kit.labels import NUM_CLASSES
from hpa_kit.rle import RLEError, empty_mask_string, to_coco_rle

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = [
    "COLUMNS",
    "FILE_KEY",
    "SubmissionError",
    "Triplet",
    "ValidationReport",
    "WriteReport",
    "cells_prediction_string",
    "format_confidence",
    "format_prediction_string",
    "is_placeholder",
    "labels_from_masks",
    "parse_prediction_string",
    "placeholder_prediction_string",
    "prediction_label_image",
    "read_sample",
    "read_submission",
    "submission_cells",
    "validate_submission",
    "write_submission",
]

Triplet = tuple[int, float, str]
"""One prediction: (class 0..18, confidence in [0, 1], mask text)."""

COLUMNS: tuple[str, ...] = ("ID", "ImageWidth", "ImageHeight", "PredictionString")
FILE_KEY = "<file>"
"""Key of :attr:`ValidationReport.problems` for problems of the whole file (columns...)."""

_SAMPLE_COLUMNS = COLUMNS[:3]
_MAX_PROBLEMS_PER_ID = 10
_MASK_TOKEN = re.compile(r"\S+")


class SubmissionError(ValueError):
    """A submission, sample or PredictionString that does not follow the data contract."""


# --------------------------------------------------------------------------- strings


def format_confidence(value: float) -> str:
    """Text of a confidence: 6 significant digits, positional, trailing zeros trimmed.

    Raises :class:`SubmissionError` unless ``value`` is finite and within [0, 1].

    >>> [format_confidence(v) for v in (0.5, 1.0, 0.0, 0.123456789, 0.9999999, 1.23456789e-5)]
    ['0.5', '1', '0', '0.123457', '1', '0.0000123457']
    """
    v = float(value)
    if not (0.0 <= v <= 1.0):  # also rejects nan
        raise SubmissionError(f"confidence must be a finite number in [0, 1], got {value!r}")
    if v == 0.0:
        return "0"  # also turns -0.0 into "0"
    if v >= 1e-4:  # "g" is positional for decimal exponents -4..5
        return f"{v:.6g}"
    return np.format_float_positional(v, precision=6, unique=False, fractional=False, trim="-")


def _check_triplet(
    cls: object, conf: object, mask: object, *, check_mask: bool = True
) -> str | None:
    """Problem with one triplet's values (not its mask's pixels), or None."""
    if isinstance(cls, bool) or not isinstance(cls, (int, np.integer)):
        return f"class {cls!r} is not an integer"
    if not 0 <= int(cls) < NUM_CLASSES:
        return f"class {cls} out of range 0..{NUM_CLASSES - 1}"
    try:
        c = float(conf)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return f"confidence {conf!r} is not a number"
    if not math.isfinite(c):
        return f"confidence {conf!r} is not finite"
    if not 0.0 <= c <= 1.0:
        return f"confidence {conf!r} out of range [0, 1]"
    if check_mask and not (isinstance(mask, str) and _MASK_TOKEN.fullmatch(mask)):
        return f"mask {mask!r} must be non-empty text without spaces"
    return None


def format_prediction_string(triplets: Iterable[Triplet]) -> str:
    """Join ``(class, confidence, mask)`` triplets into a PredictionString.

    Raises :class:`SubmissionError` on a class outside 0..18, a confidence outside [0, 1] or
    not finite, or an empty mask text. No triplets give ``""``.

    >>> format_prediction_string([(0, 0.5, "abc"), (2, 0.0000001, "abc")])
    '0 0.5 abc 2 0.0000001 abc'
    """
    parts: list[str] = []
    for i, triplet in enumerate(triplets):
        cls, conf, mask = triplet
        problem = _check_triplet(cls, conf, mask)
        if problem is not None:
            raise SubmissionError(f"triplet {i}: {problem}")
        parts.append(f"{int(cls)} {format_confidence(conf)} {mask}")
    return " ".join(parts)


def parse_prediction_string(text: str | None) -> list[Triplet]:
    """Split a PredictionString into ``(class, confidence, mask)`` triplets.

    Structural only: the class must be an integer and the confidence a number; ranges and
    masks are checked by :func:`validate_submission`. ``""``, whitespace, ``None`` or NaN
    (an empty CSV cell read by pandas) give ``[]``.

    >>> parse_prediction_string("0 1 eNoLCAgIMAEABJkBdQ== 5 0.25 eNoLCAgIMAEABJkBdQ==")
    [(0, 1.0, 'eNoLCAgIMAEABJkBdQ=='), (5, 0.25, 'eNoLCAgIMAEABJkBdQ==')]
    >>> parse_prediction_string("0 1")
    Traceback (most recent call last):
    ...
    hpa_kit.submission.SubmissionError: PredictionString has 2 tokens, not a multiple of 3 (class confidence mask)
    """
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return []
    if not isinstance(text, str):
        raise SubmissionError(f"PredictionString must be text, got {type(text).__name__}")
    tokens = text.split()
    if len(tokens) % 3:
        raise SubmissionError(
            f"PredictionString has {len(tokens)} tokens, not a multiple of 3 "
            "(class confidence mask)"
        )
    out: list[Triplet] = []
    for i in range(0, len(tokens), 3):
        cls_text, conf_text, mask = tokens[i : i + 3]
        try:
            cls = int(cls_text)
        except ValueError:
            raise SubmissionError(
                f"triplet {i // 3}: class {cls_text!r} is not an integer"
            ) from None
        try:
            conf = float(conf_text)
        except ValueError:
            raise SubmissionError(
                f"triplet {i // 3}: confidence {conf_text!r} is not a number"
            ) from None
        out.append((cls, conf, mask))
    return out


def placeholder_prediction_string(height: int, width: int) -> str:
    """``0 1 <empty mask>``: the row of an image without any prediction (as in the sample).

    >>> placeholder_prediction_string(1728, 1728)
    '0 1 eNoLCAjJNgIABNkBkg=='
    """
    return f"0 1 {empty_mask_string(height, width)}"


def cells_prediction_string(
    masks: Mapping[int, str],
    probs: Mapping[int, Sequence[float]],
    *,
    floor: float = 0.0,
) -> str:
    """PredictionString of every (cell, class) whose probability is ``>= floor``.

    ``masks`` maps cell id -> mask text (e.g. from :func:`hpa_kit.rle.encode_label_image`),
    ``probs`` maps the same cell ids -> 19 class probabilities. Cells ascending, then classes
    ascending. Returns ``""`` when nothing passes the floor (write the placeholder then;
    :func:`write_submission` does).

    >>> cells_prediction_string({2: "m2", 1: "m1"}, {1: [0.9] + [0.0] * 18, 2: [0.0] * 18 + [0.5]},
    ...                         floor=0.1)
    '0 0.9 m1 18 0.5 m2'
    """
    if set(masks) != set(probs):
        raise SubmissionError(
            f"masks and probs must have the same cell ids; only in masks: "
            f"{sorted(set(masks) - set(probs))}, only in probs: {sorted(set(probs) - set(masks))}"
        )
    triplets: list[Triplet] = []
    for cell in sorted(masks):
        p = np.asarray(probs[cell], dtype=np.float64)
        if p.shape != (NUM_CLASSES,):
            raise SubmissionError(
                f"cell {cell}: expected {NUM_CLASSES} class probabilities, got shape {p.shape}"
            )
        for cls in np.flatnonzero(p >= floor):
            triplets.append((int(cls), float(p[cls]), masks[cell]))
    return format_prediction_string(triplets)


# --------------------------------------------------------------------------- tables


def _read_csv(source: str | os.PathLike | pd.DataFrame, what: str) -> tuple[pd.DataFrame, str]:
    """A CSV as an all-text DataFrame (empty cells -> ""), and a name for messages."""
    import pandas as pd

    if isinstance(source, pd.DataFrame):
        return source.copy(), f"{what} DataFrame"
    path = Path(source)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except FileNotFoundError:
        raise SubmissionError(f"{what} file not found: {path}") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise SubmissionError(f"{what} {path} is not a readable CSV: {exc}") from None
    return df, str(path)


def _require_columns(df: pd.DataFrame, columns: Sequence[str], name: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise SubmissionError(f"{name}: missing column(s) {missing}; has {list(df.columns)}")


def _size_value(value: object) -> int | None:
    """A positive integer image size from a CSV cell (or an integral number), or None."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)
    try:
        number = int(str(value).strip())
    except ValueError:
        return None
    return number if number > 0 else None


def _typed_table(df: pd.DataFrame, columns: Sequence[str], name: str) -> pd.DataFrame:
    """``columns`` of ``df`` with text ids and integer sizes; raises on bad or repeated rows."""
    _require_columns(df, columns, name)
    out = df.loc[:, list(columns)].copy()
    out["ID"] = out["ID"].astype(str).str.strip()
    if (out["ID"] == "").any():
        raise SubmissionError(f"{name}: empty ID in row(s) {list(np.flatnonzero(out['ID'] == ''))}")
    repeated = sorted(out["ID"][out["ID"].duplicated()].unique())
    if repeated:
        raise SubmissionError(f"{name}: repeated ID(s) {repeated[:10]}")
    for col in ("ImageWidth", "ImageHeight"):
        sizes = [_size_value(v) for v in out[col]]
        bad = [out["ID"].iloc[i] for i, s in enumerate(sizes) if s is None]
        if bad:
            raise SubmissionError(f"{name}: {col} is not a positive integer for id(s) {bad[:10]}")
        out[col] = np.asarray(sizes, dtype=np.int64)
    if "PredictionString" in out.columns:
        out["PredictionString"] = out["PredictionString"].fillna("").astype(str)
    return out.reset_index(drop=True)


def read_sample(source: str | os.PathLike | pd.DataFrame) -> pd.DataFrame:
    """The expected ids and sizes: ``ID`` (str), ``ImageWidth``, ``ImageHeight`` (int64).

    ``source`` is a CSV path (e.g. ``sample_submission.csv``) or a DataFrame with those
    columns; other columns are dropped. Raises :class:`SubmissionError` on a missing column,
    an empty or repeated id, or a size that is not a positive integer.
    """
    df, name = _read_csv(source, "sample")
    return _typed_table(df, _SAMPLE_COLUMNS, name)


def read_submission(source: str | os.PathLike | pd.DataFrame) -> pd.DataFrame:
    """A submission (or truth) table with typed sizes and text PredictionStrings.

    Raises :class:`SubmissionError` on a missing column, a repeated or empty id, or a bad
    size; it does not check the PredictionStrings (see :func:`validate_submission`).
    """
    df, name = _read_csv(source, "submission")
    return _typed_table(df, COLUMNS, name)


# --------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class WriteReport:
    """What :func:`write_submission` wrote.

    ``placeholders`` maps each id written with the placeholder to why ("missing: no
    prediction", "failed: <cause>", "no cells", "invalid: <problem>"); ``extra`` lists
    predicted ids that are not in the sample (not written).
    """

    path: Path
    n_rows: int
    placeholders: dict[str, str] = field(default_factory=dict)
    extra: tuple[str, ...] = ()

    @property
    def n_predicted(self) -> int:
        return self.n_rows - len(self.placeholders)

    def summary(self, *, limit: int = 20) -> str:
        lines = [
            f"wrote {self.path}: {self.n_rows} rows, {self.n_predicted} with predictions, "
            f"{len(self.placeholders)} placeholder(s), {len(self.extra)} extra id(s) skipped"
        ]
        for image_id, reason in list(self.placeholders.items())[:limit]:
            lines.append(f"  placeholder {image_id}: {reason}")
        if len(self.placeholders) > limit:
            lines.append(f"  ... and {len(self.placeholders) - limit} more placeholder(s)")
        for image_id in self.extra[:limit]:
            lines.append(f"  not in the sample, skipped: {image_id}")
        if len(self.extra) > limit:
            lines.append(f"  ... and {len(self.extra) - limit} more extra id(s)")
        return "\n".join(lines)


def _structure_problem(text: str) -> str | None:
    """Problem with a PredictionString's triplets (masks not decoded), or None."""
    try:
        triplets = parse_prediction_string(text)
    except SubmissionError as exc:
        return str(exc)
    for i, (cls, conf, mask) in enumerate(triplets):
        problem = _check_triplet(cls, conf, mask, check_mask=False)  # split: no spaces
        if problem is not None:
            return f"triplet {i}: {problem}"
    return None


def write_submission(
    path: str | os.PathLike,
    predictions: Mapping[str, str],
    sample: str | os.PathLike | pd.DataFrame,
    *,
    failures: Mapping[str, str] | None = None,
) -> WriteReport:
    """Write ``submission.csv``: every sample id exactly once, in sample order.

    ``predictions`` maps id -> PredictionString; ``sample`` gives the ids and sizes (a path
    to ``sample_submission.csv`` or a DataFrame, see :func:`read_sample`); ``failures`` maps
    id -> cause for images whose processing failed. An id that failed, has no prediction,
    an empty PredictionString (no cells) or a structurally invalid one (bad token count,
    class, confidence) gets the placeholder ``0 1 <empty mask>`` at its size, and the
    report says why. Masks are not decoded here (run :func:`validate_submission`).

    The file is written to a temporary name in the same folder, then renamed over ``path``:
    a reader never sees half a file.
    """
    table = read_sample(sample)
    unsafe = [i for i in table["ID"] if any(ch in i for ch in ',"\r\n')]
    if unsafe:
        raise SubmissionError(f"sample ids must not hold commas, quotes or newlines: {unsafe[:5]}")
    failures = dict(failures or {})
    path = Path(path)
    placeholders: dict[str, str] = {}
    lines = [",".join(COLUMNS)]
    for image_id, width, height in table.itertuples(index=False, name=None):
        text = predictions.get(image_id)
        if image_id in failures:
            reason: str | None = f"failed: {failures[image_id]}"
        elif text is None:
            reason = "missing: no prediction"
        elif not str(text).strip():
            reason = "no cells"
        else:
            problem = _structure_problem(str(text))
            reason = None if problem is None else f"invalid: {problem}"
        if reason is None:
            row_text = " ".join(str(text).split())
        else:
            placeholders[image_id] = reason
            row_text = placeholder_prediction_string(int(height), int(width))
        lines.append(f"{image_id},{int(width)},{int(height)},{row_text}")
    expected = set(table["ID"])
    extra = tuple(sorted(i for i in predictions if i not in expected))
    _atomic_write_text(path, "\n".join(lines) + "\n")
    return WriteReport(path=path, n_rows=len(table), placeholders=placeholders, extra=extra)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="ascii", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- validation


@dataclass(frozen=True)
class ValidationReport:
    """Problems found by :func:`validate_submission`, by image id.

    ``problems`` maps an id (or :data:`FILE_KEY` for the whole file) to messages; ids
    without problems are absent. ``ok`` is True when there are none.
    """

    problems: dict[str, list[str]]
    n_rows: int
    n_expected: int
    n_masks_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self, *, limit: int = 50) -> str:
        if self.ok:
            return (
                f"OK: {self.n_rows} rows match the {self.n_expected} expected ids; "
                f"{self.n_masks_checked} distinct masks decode at their stated sizes"
            )
        n_messages = sum(len(v) for v in self.problems.values())
        lines = [
            f"INVALID: {n_messages} problem(s) in {len(self.problems)} id(s) "
            f"({self.n_rows} rows, {self.n_expected} expected ids)"
        ]
        for image_id, messages in list(self.problems.items())[:limit]:
            for message in messages:
                lines.append(f"  {image_id}: {message}")
        if len(self.problems) > limit:
            lines.append(f"  ... and {len(self.problems) - limit} more id(s) with problems")
        return "\n".join(lines)


def _prediction_problems(text: str, height: int | None, width: int | None) -> tuple[list[str], int]:
    """Problems of one PredictionString and the number of distinct masks decoded."""
    if not text.strip():
        return ["empty PredictionString (write the placeholder '0 1 <empty mask>')"], 0
    tokens = text.split()
    if len(tokens) % 3:
        return [
            f"PredictionString has {len(tokens)} tokens, not a multiple of 3 "
            "(class confidence mask)"
        ], 0
    problems: list[str] = []
    masks: dict[str, list[int]] = {}
    for i in range(0, len(tokens), 3):
        cls_text, conf_text, mask = tokens[i : i + 3]
        k = i // 3
        try:
            cls = int(cls_text)
        except ValueError:
            problems.append(f"triplet {k}: class {cls_text!r} is not an integer")
        else:
            if not 0 <= cls < NUM_CLASSES:
                problems.append(f"triplet {k}: class {cls} out of range 0..{NUM_CLASSES - 1}")
        try:
            conf = float(conf_text)
        except ValueError:
            problems.append(f"triplet {k}: confidence {conf_text!r} is not a number")
        else:
            if not math.isfinite(conf):
                problems.append(f"triplet {k}: confidence {conf_text!r} is not finite")
            elif not 0.0 <= conf <= 1.0:
                problems.append(f"triplet {k}: confidence {conf_text} out of range [0, 1]")
        masks.setdefault(mask, []).append(k)
    if height is None or width is None:
        return problems, 0
    for mask, where in masks.items():  # each distinct mask string is decoded once
        try:
            to_coco_rle(mask, height, width)  # decodes to run lengths, checks they cover h x w
        except RLEError as exc:
            shown = mask if len(mask) <= 24 else mask[:21] + "..."
            problems.append(f"triplet(s) {where[:5]}: mask {shown!r}: {exc}")
    return problems, len(masks)


def validate_submission(
    submission: str | os.PathLike | pd.DataFrame,
    sample: str | os.PathLike | pd.DataFrame,
) -> ValidationReport:
    """Check a submission against the expected ids and sizes of ``sample``.

    Reports, by id: missing, extra and repeated ids; ImageWidth/ImageHeight that differ from
    the sample or are not positive integers; empty PredictionStrings; token counts that are
    not a multiple of 3; classes outside 0..18; confidences that are not finite numbers in
    [0, 1]; masks that do not decode to exactly ImageHeight x ImageWidth pixels (each
    distinct mask string of an image is decoded once, to its run lengths, by
    :func:`hpa_kit.rle.to_coco_rle`; pixels are never materialised). Missing columns are
    reported under :data:`FILE_KEY`. ``submission`` and ``sample`` are CSV paths or
    DataFrames.

    >>> import pandas as pd
    >>> from hpa_kit.rle import encode_binary_mask
    >>> cell = encode_binary_mask(np.array([[1, 1, 0], [1, 1, 0]], dtype=bool))
    >>> sample = pd.DataFrame({"ID": ["img"], "ImageWidth": [3], "ImageHeight": [2]})
    >>> validate_submission(sample.assign(PredictionString=f"0 0.9 {cell}"), sample).ok
    True
    >>> validate_submission(sample.assign(PredictionString=f"19 0.9 {cell}"), sample).problems
    {'img': ['triplet 0: class 19 out of range 0..18']}
    """
    expected = read_sample(sample)
    df, name = _read_csv(submission, "submission")
    sizes = {
        image_id: (int(w), int(h)) for image_id, w, h in expected.itertuples(index=False, name=None)
    }
    missing_columns = [c for c in COLUMNS if c not in df.columns]
    if missing_columns:
        return ValidationReport(
            problems={FILE_KEY: [f"{name}: missing column(s) {missing_columns}"]},
            n_rows=len(df),
            n_expected=len(expected),
        )
    problems: dict[str, list[str]] = {}

    def add(image_id: str, message: str) -> None:
        messages = problems.setdefault(image_id, [])
        if len(messages) < _MAX_PROBLEMS_PER_ID:
            messages.append(message)
        elif len(messages) == _MAX_PROBLEMS_PER_ID:
            messages.append("(more problems not shown)")

    ids = [str(v).strip() for v in df["ID"]]
    counts = Counter(ids)
    for image_id in expected["ID"]:
        if image_id not in counts:
            add(image_id, "missing: id of the sample has no row")
    n_masks = 0
    for row, (image_id, width_text, height_text, text) in enumerate(
        zip(ids, df["ImageWidth"], df["ImageHeight"], df["PredictionString"], strict=True)
    ):
        key = image_id or f"<row {row}>"
        if not image_id:
            add(key, f"row {row}: empty ID")
        elif image_id not in sizes:
            add(key, "extra: id is not in the sample")
        if counts[image_id] > 1:
            add(key, f"row {row}: id appears {counts[image_id]} times")
        width, height = _size_value(width_text), _size_value(height_text)
        if width is None:
            add(key, f"ImageWidth {width_text!r} is not a positive integer")
        if height is None:
            add(key, f"ImageHeight {height_text!r} is not a positive integer")
        if image_id in sizes:
            want_w, want_h = sizes[image_id]
            if width is not None and width != want_w:
                add(key, f"ImageWidth {width}, expected {want_w}")
            if height is not None and height != want_h:
                add(key, f"ImageHeight {height}, expected {want_h}")
        found, n_decoded = _prediction_problems(
            text if isinstance(text, str) else "", height, width
        )
        n_masks += n_decoded
        for message in found:
            add(key, message)
    return ValidationReport(
        problems=problems, n_rows=len(df), n_expected=len(expected), n_masks_checked=n_masks
    )


# --------------------------------------------------------------------------- cells of a row


def submission_cells(prediction: str | None) -> tuple[list[str], np.ndarray]:
    """The cells of one PredictionString: ``(masks, probs)``.

    ``masks`` are the distinct mask texts in order of first appearance (one per cell),
    ``probs`` a ``(cells, 19)`` float32 table of their confidences (0 where a cell has no
    triplet for a class). The placeholder ``0 1 <empty mask>`` counts as one cell here; test
    for it with :func:`is_placeholder`. Triplets are split by :func:`parse_prediction_string`.

    >>> masks, probs = submission_cells("0 0.5 AA 3 0.25 AA 0 0.75 BB")
    >>> masks, probs[:, [0, 3]].tolist()
    (['AA', 'BB'], [[0.5, 0.25], [0.75, 0.0]])
    >>> submission_cells("")[1].shape
    (0, 19)
    """
    order: dict[str, int] = {}
    entries = []
    for cls, conf, mask in parse_prediction_string(prediction):
        entries.append((order.setdefault(mask, len(order)), int(cls), float(conf)))
    probs = np.zeros((len(order), NUM_CLASSES), dtype=np.float32)
    for cell, cls, conf in entries:
        probs[cell, cls] = conf
    return list(order), probs


def is_placeholder(masks: Sequence[str], height: int, width: int) -> bool:
    """True when ``masks`` (from :func:`submission_cells`) is the placeholder row's single
    empty mask: the image has no cell.

    >>> is_placeholder(["eNoLCAgIMAEABJkBdQ=="], 2048, 2048), is_placeholder([], 2048, 2048)
    (True, False)
    """
    return len(masks) == 1 and masks[0] == empty_mask_string(height, width)


def labels_from_masks(masks: Sequence[str], height: int, width: int) -> np.ndarray:
    """``(height, width)`` int32 label image of ``masks``: cell ``k`` (1-based) is ``masks[k - 1]``;
    where masks overlap, the later one wins; 0 is background.

    >>> from hpa_kit.rle import encode_binary_mask
    >>> top = encode_binary_mask(np.array([[1, 1], [0, 0]], dtype=bool))
    >>> right = encode_binary_mask(np.array([[0, 1], [0, 1]], dtype=bool))
    >>> labels_from_masks([top, right], 2, 2).tolist()
    [[1, 2], [0, 2]]
    """
    from hpa_kit.rle import decode_binary_mask

    labels = np.zeros((height, width), dtype=np.int32)
    for cell, mask in enumerate(masks, start=1):
        labels[decode_binary_mask(mask, height, width)] = cell
    return labels


def prediction_label_image(
    prediction: str | None, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """One row's cells as ``(labels, probs)``: the int32 label image of its masks
    (:func:`labels_from_masks`, cells in order of first appearance) and their ``(cells, 19)``
    confidences (:func:`submission_cells`). The placeholder row gives no cell.

    >>> from hpa_kit.rle import encode_binary_mask
    >>> cell = encode_binary_mask(np.array([[0, 1], [0, 1]], dtype=bool))
    >>> labels, probs = prediction_label_image(f"16 0.5 {cell}", 2, 2)
    >>> labels.tolist(), probs[:, 16].tolist()
    ([[0, 1], [0, 1]], [0.5])
    >>> labels, probs = prediction_label_image(placeholder_prediction_string(2, 2), 2, 2)
    >>> int(labels.max()), probs.shape
    (0, (0, 19))
    """
    masks, probs = submission_cells(prediction)
    if is_placeholder(masks, height, width):
        masks, probs = [], probs[:0]
    return labels_from_masks(masks, height, width), probs

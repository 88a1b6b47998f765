"""Building, writing, reading and validating the competition's ``submission.csv``.

Data contract
-------------
- A submission is a CSV with the columns ``ID,ImageWidth,ImageHeight,PredictionString`` (in
  any order, each once, no others) and one row per test image (any order, every id exactly
  once). A row is one line: a field may be quoted (``"..."``, ``""`` for a quote) but holds no
  line break. Blank lines are skipped; a UTF-8 byte-order mark before the header is allowed.
- ``ID``: printable ASCII without spaces, commas, quotes, ``/``, ``\\`` or ``..`` (an id is
  also a file name, ``{ID}_red.png``). ``ImageWidth``, ``ImageHeight``: ``1`` to
  :data:`MAX_SIDE` written plainly (ASCII digits, no sign, no leading zero).
- A PredictionString is a whitespace-separated list of triplets ``class confidence mask``:
  ``class`` one of ``0`` .. ``18`` written plainly; ``confidence`` a plain ASCII decimal
  (``0.25``, ``1``, ``.5``, ``2.5e-05``; no ``_``, ``nan`` or ``inf``) within [0, 1];
  ``mask`` base64 text of the REFERENCE.md section 1 encoding of a boolean
  ``ImageHeight x ImageWidth`` mask (:mod:`hpa_kit.rle`). A cell with several classes repeats
  its mask once per class.
- An image with no cells (or whose processing failed) gets the placeholder
  ``0 1 <empty mask>``, as in the competition's ``sample_submission.csv``. An empty
  PredictionString is reported as a problem by :func:`validate_submission`.
- Confidences are written by :func:`format_confidence`: 6 significant digits, positional
  notation (never ``1e-05``), trailing zeros trimmed: ``0.5``, ``1``, ``0.123457``,
  ``0.0000123457``. Six digits keep every ranking that matters (the metric only sorts them).
- Limits that no real file reaches, so that a hostile one costs bounded memory: a line holds
  at most :data:`MAX_LINE_BYTES`; masks decode within :func:`hpa_kit.rle.max_counts_bytes`.
  Files are read row by row (:func:`iter_rows`, :class:`RowIndex`), never whole.

Every rule above lives here once; :mod:`hpa_kit.metric` reads its inputs through
:func:`iter_rows`, :class:`RowIndex` and :func:`parse_prediction_string`.

>>> format_prediction_string([(3, 0.25, "eNoLCAgIMAEABJkBdQ=="), (16, 1.0, "eNoLCAgIMAEABJkBdQ==")])
'3 0.25 eNoLCAgIMAEABJkBdQ== 16 1 eNoLCAgIMAEABJkBdQ=='
>>> parse_prediction_string("3 0.25 eNoLCAgIMAEABJkBdQ==")
[(3, 0.25, 'eNoLCAgIMAEABJkBdQ==')]
>>> placeholder_prediction_string(2048, 2048)
'0 1 eNoLCAgIMAEABJkBdQ=='
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hpa_kit.errors import UsageError
from hpa_kit.labels import NUM_CLASSES, class_index
from hpa_kit.outputs import atomic_write_text
from hpa_kit.rle import RLEError, empty_mask_string, mask_area

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = [
    "COLUMNS",
    "FILE_KEY",
    "MAX_LINE_BYTES",
    "MAX_SIDE",
    "RowIndex",
    "SubmissionError",
    "SubmissionRow",
    "Triplet",
    "ValidationReport",
    "WriteReport",
    "cells_prediction_string",
    "check_image_id",
    "format_confidence",
    "format_prediction_string",
    "is_placeholder",
    "iter_rows",
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
"""Key of :attr:`ValidationReport.problems` for problems of the whole file or of a row
without a usable id (columns, a row with the wrong number of fields...)."""

MAX_SIDE = 16384
"""Largest ImageWidth/ImageHeight accepted: 5x the largest test image (3072)."""
MAX_LINE_BYTES = 32 * 2**20
"""Longest CSV line accepted (32 MiB): a real row holds a few MB (19 triplets per cell)."""

_SAMPLE_COLUMNS = COLUMNS[:3]
_MAX_PROBLEMS_PER_ID = 10
_MAX_LISTED_IDS = 10_000

_INTEGER_TEXT = re.compile(r"-?[1-9][0-9]*")
_DECIMAL_TEXT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_MASK_TEXT = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_SIZE_TEXT = re.compile(r"[1-9][0-9]*")
_ID_TEXT = re.compile(r"[!#-&(-+\-.0-\[\]-~]+")  # printable ASCII but space , " ' / \\
_ID_FORBIDDEN = {
    ",": "a comma",
    '"': "a quote",
    "'": "a quote",
    "/": "a path separator",
    "\\": "a path separator",
}


class SubmissionError(UsageError):
    """A submission, sample or PredictionString that does not follow the data contract
    (a :class:`hpa_kit.errors.UsageError`: exit status 2 in ``hpa-kit``)."""


# --------------------------------------------------------------------------- token rules


def _shown(text: str, limit: int = 24) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _out_of_range(shown: object) -> str:
    return f"class {shown} out of range 0..{NUM_CLASSES - 1}"


def _confidence_problem(value: float, shown: object) -> str | None:
    if not math.isfinite(value):
        return f"confidence {shown} is not finite"
    if not 0.0 <= value <= 1.0:
        return f"confidence {shown} out of range [0, 1]"
    return None


def _mask_problem(text: object) -> str | None:
    if isinstance(text, str) and _MASK_TEXT.fullmatch(text):
        return None
    shown = _shown(text) if isinstance(text, str) else text
    return f"mask {shown!r} is not base64 text (A-Z a-z 0-9 + / =, no spaces)"


def _read_class(text: str) -> tuple[int, str | None]:
    """A class token: one of ``0`` .. ``18`` exactly (int() would also take ``+1``, ``1_0``,
    ``01`` or non-ASCII digits)."""
    value = class_index(text)
    if value is not None:
        return value, None
    if _INTEGER_TEXT.fullmatch(text):  # a plain integer, and not one of the classes
        return -1, _out_of_range(_shown(text))
    return -1, f"class {_shown(text)!r} is not one of 0..{NUM_CLASSES - 1} written plainly"


def _read_confidence(text: str) -> tuple[float, str | None]:
    """A confidence token: a plain ASCII decimal within [0, 1] (float() would also take
    ``nan``, ``inf``, ``1_0`` or non-ASCII digits)."""
    if not _DECIMAL_TEXT.fullmatch(text):
        return math.nan, f"confidence {_shown(text)!r} is not a plain decimal number"
    value = float(text)
    return value, _confidence_problem(value, text)


def _check_triplet(cls: object, conf: object, mask: object) -> str | None:
    """Problem with one triplet given as Python values (see :func:`format_prediction_string`)."""
    if isinstance(cls, bool) or not isinstance(cls, (int, np.integer)):
        return f"class {cls!r} is not an integer"
    if not 0 <= int(cls) < NUM_CLASSES:
        return _out_of_range(int(cls))
    if isinstance(conf, bool) or not isinstance(conf, (int, float, np.integer, np.floating)):
        return f"confidence {conf!r} is not a number"
    return _confidence_problem(float(conf), conf) or _mask_problem(mask)


# --------------------------------------------------------------------------- strings


def format_confidence(value: float) -> str:
    """Text of a confidence: 6 significant digits, positional, trailing zeros trimmed.

    Raises :class:`SubmissionError` unless ``value`` is finite and within [0, 1].

    >>> [format_confidence(v) for v in (0.5, 1.0, 0.0, 0.123456789, 0.9999999, 1.23456789e-5)]
    ['0.5', '1', '0', '0.123457', '1', '0.0000123457']
    """
    v = float(value)
    problem = _confidence_problem(v, value)
    if problem is not None:
        raise SubmissionError(problem)
    if v == 0.0:
        return "0"  # also turns -0.0 into "0"
    if v >= 1e-4:  # "g" is positional for decimal exponents -4..5
        return f"{v:.6g}"
    return np.format_float_positional(v, precision=6, unique=False, fractional=False, trim="-")


def format_prediction_string(triplets: Iterable[Triplet]) -> str:
    """Join ``(class, confidence, mask)`` triplets into a PredictionString.

    Raises :class:`SubmissionError` on a class outside 0..18, a confidence outside [0, 1] or
    not finite, or a mask that is not base64 text. No triplets give ``""``.

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


def _split_triplets(text: str, *, max_problems: int = 1) -> tuple[list[Triplet | None], list[str]]:
    """The triplets of a PredictionString (``None`` where a triplet breaks a rule) and up to
    ``max_problems`` problems, each naming its triplet. Masks are checked as text only."""
    tokens = text.split()
    if len(tokens) % 3:
        return [], [
            f"PredictionString has {len(tokens)} tokens, not a multiple of 3 "
            "(class confidence mask)"
        ]
    triplets: list[Triplet | None] = []
    problems: list[str] = []
    masks: dict[str, str] = {}  # one string object per distinct mask (a cell repeats it)
    for k in range(0, len(tokens), 3):
        cls, problem = _read_class(tokens[k])
        if problem is None:
            conf, problem = _read_confidence(tokens[k + 1])
        if problem is None:
            problem = _mask_problem(tokens[k + 2])
        if problem is None:
            triplets.append((cls, conf, masks.setdefault(tokens[k + 2], tokens[k + 2])))
            continue
        triplets.append(None)
        if len(problems) < max_problems:
            problems.append(f"triplet {k // 3}: {problem}")
    return triplets, problems


def parse_prediction_string(text: str | None) -> list[Triplet]:
    """Split a PredictionString into ``(class, confidence, mask)`` triplets, strictly.

    Classes, confidences and the text of the masks follow the rules of the module docstring;
    the masks are not decoded (:func:`validate_submission` does that). ``""``, whitespace,
    ``None`` or NaN (an empty CSV cell read by pandas) give ``[]``. Raises
    :class:`SubmissionError` naming the first triplet that breaks a rule.

    >>> parse_prediction_string("0 1 eNoLCAgIMAEABJkBdQ== 5 0.25 eNoLCAgIMAEABJkBdQ==")
    [(0, 1.0, 'eNoLCAgIMAEABJkBdQ=='), (5, 0.25, 'eNoLCAgIMAEABJkBdQ==')]
    >>> parse_prediction_string("0 1")
    Traceback (most recent call last):
    ...
    hpa_kit.submission.SubmissionError: PredictionString has 2 tokens, not a multiple of 3 (class confidence mask)
    >>> parse_prediction_string("+1 0.5 eNoLCAgIMAEABJkBdQ==")
    Traceback (most recent call last):
    ...
    hpa_kit.submission.SubmissionError: triplet 0: class '+1' is not one of 0..18 written plainly
    """
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return []
    if not isinstance(text, str):
        raise SubmissionError(f"PredictionString must be text, got {type(text).__name__}")
    triplets, problems = _split_triplets(text)
    if problems:
        raise SubmissionError(problems[0])
    return triplets  # type: ignore[return-value]  # no None without a problem


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


# --------------------------------------------------------------------------- reading tables


def _id_problem(text: str) -> str | None:
    """Why ``text`` cannot be an image id (see the module docstring), or None."""
    if _ID_TEXT.fullmatch(text) and ".." not in text:
        return None
    if not text:
        return "empty ID"
    if text != text.strip():
        return f"ID {_shown(text, 60)!r} has surrounding spaces"
    for char in text:
        if char in _ID_FORBIDDEN:
            return f"ID {_shown(text, 60)!r} holds {_ID_FORBIDDEN[char]} ({char!r})"
        if not "!" <= char <= "~":
            return f"ID {_shown(text, 60)!r} holds {char!r}: not printable ASCII without spaces"
    if ".." in text:
        return f"ID {_shown(text, 60)!r} holds '..'"
    return None


def check_image_id(text: str) -> str:
    """``text`` when it can be an image id (the ``ID`` rule of the module docstring, the one
    :func:`read_sample` and :func:`validate_submission` apply), else :class:`SubmissionError`
    saying why. For code that makes ids, so that a bad one is refused before anything is
    written.

    >>> check_image_id("synth_00000")
    'synth_00000'
    >>> check_image_id('a"b_00000')
    Traceback (most recent call last):
    ...
    hpa_kit.submission.SubmissionError: ID 'a"b_00000' holds a quote ('"')
    >>> check_image_id("a..b_00000")
    Traceback (most recent call last):
    ...
    hpa_kit.submission.SubmissionError: ID 'a..b_00000' holds '..'
    """
    problem = _id_problem(text)
    if problem is not None:
        raise SubmissionError(problem)
    return text


def _read_size(text: str, column: str) -> tuple[int, str | None]:
    """An ImageWidth/ImageHeight: 1 .. MAX_SIDE written plainly (int() would take ``+4``,
    `` 4``, ``4_0`` or non-ASCII digits)."""
    if not _SIZE_TEXT.fullmatch(text):
        return 0, f"{column} {_shown(text)!r} is not a positive integer written plainly"
    if len(text) > len(str(MAX_SIDE)) or int(text) > MAX_SIDE:
        return 0, f"{column} {_shown(text)} is larger than {MAX_SIDE}"
    return int(text), None


def _cell_text(value: Any) -> str:
    """A DataFrame cell as the text a CSV would hold (integral floats as integers, NaN "")."""
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, (bool, np.bool_)):
        return "" if value is None else str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return ""
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    import pandas as pd

    return "" if pd.isna(value) is True else str(value)


def _split_fields(text: str) -> list[str] | str:
    """The fields of one CSV line, or why it cannot be read (a quoted field must close on
    the same line)."""
    if '"' not in text:
        return text.split(",")
    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, MAX_LINE_BYTES))
    try:
        return next(csv.reader([text], strict=True))
    except csv.Error as exc:
        return f"bad quoting ({exc}); a row is one line"
    finally:
        csv.field_size_limit(limit)


def _open_csv(path: Path, what: str) -> Any:
    if path.is_dir():
        raise SubmissionError(f"{what} {path} is a directory, not a CSV file")
    try:
        return open(path, "rb")  # noqa: SIM115 - closed by _Table.close
    except FileNotFoundError:
        raise SubmissionError(f"{what} file not found: {path}") from None
    except OSError as exc:
        raise SubmissionError(f"{what} {path} cannot be read: {exc.strerror or exc}") from None


class _Table:
    """A CSV file or a DataFrame read as text, one row at a time (a file is never read whole).

    ``header``: the column names. :meth:`rows` yields ``(where, locator, fields)``: ``where``
    is ``"line N"`` (a file; the header is line 1) or ``"row N"`` (a DataFrame position),
    ``fields`` the row's texts or a string saying why the line cannot be split.
    :meth:`row_at` reads a row again from its locator. Bytes that are not UTF-8, a NUL byte or
    a line longer than :data:`MAX_LINE_BYTES` raise :class:`SubmissionError`.
    """

    def __init__(self, source: str | os.PathLike | pd.DataFrame, what: str) -> None:
        self._frame: Any = None
        self._handle: Any = None
        if isinstance(source, (str, os.PathLike)):
            self.name = f"{what} {os.fspath(source)}"
            self._handle = _open_csv(Path(source), what)
            try:
                raw = self._handle.readline(MAX_LINE_BYTES + 1)
                if not raw:
                    raise SubmissionError(f"{self.name} is empty: no header line")
                fields = _split_fields(self._decode(raw, 1).removeprefix("\ufeff"))
                if isinstance(fields, str):
                    raise SubmissionError(f"{self.name} line 1 (header): {fields}")
            except BaseException:
                self.close()
                raise
            self.header, self._body = tuple(fields), len(raw)
        elif hasattr(source, "columns") and hasattr(source, "itertuples"):
            self.name = f"{what} DataFrame"
            self._frame = source
            self.header, self._body = tuple(str(c) for c in source.columns), 0
        else:
            raise SubmissionError(f"{what} must be a CSV path or a DataFrame, got {source!r:.80}")

    def __enter__(self) -> _Table:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()

    def _decode(self, raw: bytes, line_no: int) -> str:
        if len(raw) > MAX_LINE_BYTES:
            raise SubmissionError(
                f"{self.name} line {line_no} is longer than {MAX_LINE_BYTES} bytes: "
                "not a table of this format"
            )
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SubmissionError(
                f"{self.name} line {line_no} is not UTF-8 text (byte {exc.start}): "
                "a binary or corrupt file?"
            ) from None
        if "\x00" in text:
            raise SubmissionError(
                f"{self.name} line {line_no} holds a NUL byte: a binary or corrupt file?"
            )
        return text.removesuffix("\n").removesuffix("\r")

    def rows(self) -> Iterator[tuple[str, Any, list[str] | str]]:
        if self._frame is not None:
            for pos, values in enumerate(self._frame.itertuples(index=False, name=None)):
                yield f"row {pos}", pos, [_cell_text(v) for v in values]
            return
        self._handle.seek(self._body)
        offset, line_no = self._body, 1
        while raw := self._handle.readline(MAX_LINE_BYTES + 1):
            line_no += 1
            text = self._decode(raw, line_no)
            if text:  # blank lines hold no row
                yield f"line {line_no}", (offset, line_no), _split_fields(text)
            offset += len(raw)

    def where(self, locator: Any) -> str:
        return f"row {locator}" if self._frame is not None else f"line {locator[1]}"

    def row_at(self, locator: Any) -> tuple[str, list[str] | str]:
        if self._frame is not None:
            return self.where(locator), [_cell_text(v) for v in self._frame.iloc[locator]]
        self._handle.seek(locator[0])
        raw = self._handle.readline(MAX_LINE_BYTES + 1)
        return self.where(locator), _split_fields(self._decode(raw, locator[1]))


def _column_positions(
    header: Sequence[str],
    required: Sequence[str],
    *,
    optional: Sequence[str] = (),
    others: bool = False,
) -> tuple[dict[str, int], str | None]:
    """Position of each known column, and what is wrong with the header (or None)."""
    counts: dict[str, int] = {}
    for name in header:
        counts[name] = counts.get(name, 0) + 1
    parts = []
    missing = [c for c in required if c not in counts]
    if missing:
        parts.append(f"missing column(s) {missing}")
    repeated = [c for c, n in counts.items() if n > 1]
    if repeated:
        parts.append(f"repeated column(s) {[_shown(c) for c in repeated[:10]]}")
    unknown = [c for c in counts if c not in required and c not in optional]
    if unknown and not others:
        parts.append(f"unknown column(s) {[_shown(c) for c in unknown[:10]]}")
    positions = {c: header.index(c) for c in (*required, *optional) if c in counts}
    if not parts:
        return positions, None
    return positions, "; ".join(parts) + f" (the columns are {','.join(required)})"


def _require_columns(table: _Table, required: Sequence[str], **options: Any) -> dict[str, int]:
    positions, problem = _column_positions(table.header, required, **options)
    if problem is not None:
        raise SubmissionError(f"{table.name}: {problem}")
    return positions


def _shape_problem(fields: list[str] | str, header: Sequence[str]) -> str | None:
    if isinstance(fields, str):
        return fields
    if len(fields) != len(header):
        return f"{len(fields)} field(s), expected {len(header)} ({','.join(header)})"
    return None


@dataclass(frozen=True)
class SubmissionRow:
    """One checked row of a submission-format table (the PredictionString is not parsed)."""

    where: str
    """``"line N"`` of a file (the header is line 1) or ``"row N"`` of a DataFrame."""
    image_id: str
    width: int
    height: int
    prediction: str


def _typed_row(
    table: _Table, positions: Mapping[str, int], where: str, fields: list[str] | str
) -> SubmissionRow:
    problem = _shape_problem(fields, table.header)
    if problem is None:
        image_id = fields[positions["ID"]]
        problem = _id_problem(image_id)
    if problem is None:
        width, problem = _read_size(fields[positions["ImageWidth"]], "ImageWidth")
        height, other = _read_size(fields[positions["ImageHeight"]], "ImageHeight")
        problem = problem or other
        if problem is not None:
            problem += f" (ID {image_id!r})"
    if problem is not None:
        raise SubmissionError(f"{table.name} {where}: {problem}")
    prediction = positions.get("PredictionString")
    text = fields[prediction] if prediction is not None else ""
    return SubmissionRow(where, image_id, width, height, text)


def _typed_rows(table: _Table, positions: Mapping[str, int]) -> Iterator[SubmissionRow]:
    seen: dict[str, str] = {}
    for where, _, fields in table.rows():
        row = _typed_row(table, positions, where, fields)
        first = seen.setdefault(row.image_id, where)
        if first != where:
            raise SubmissionError(
                f"{table.name} {where}: repeated ID {row.image_id!r} (first at {first})"
            )
        yield row


def iter_rows(
    source: str | os.PathLike | pd.DataFrame, *, what: str = "submission"
) -> Iterator[SubmissionRow]:
    """The rows of a submission-format table (a submission or a truth file), one at a time.

    ``source`` is a CSV path or a DataFrame; ``what`` names it in messages. Checks the
    columns, the number of fields, the id, the sizes and that no id repeats; raises
    :class:`SubmissionError` naming the file, the line and the cause at the first problem
    (read the PredictionStrings with :func:`parse_prediction_string`). Memory holds one row
    and the ids seen.
    """
    with _Table(source, what) as table:
        yield from _typed_rows(table, _require_columns(table, COLUMNS))


class RowIndex:
    """The rows of a submission-format table by id, read on demand (a file is not held).

    Every row is checked as by :func:`iter_rows` (not its PredictionString). Rows whose id
    is in ``keep`` (all rows when ``None``) are found by :meth:`get`; a repeated kept id raises.
    The others are only counted (``n_other``; the first 10 000 ids in ``other_ids``), and
    repeats among them are not looked for. Close it (or use ``with``) to close the file.
    """

    def __init__(
        self,
        source: str | os.PathLike | pd.DataFrame,
        *,
        what: str = "submission",
        keep: Collection[str] | None = None,
    ) -> None:
        self._table = _Table(source, what)
        self._where: dict[str, Any] = {}
        self.other_ids: list[str] = []
        self.n_other = self.n_rows = 0
        try:
            self._positions = _require_columns(self._table, COLUMNS)
            for where, locator, fields in self._table.rows():
                self._add(_typed_row(self._table, self._positions, where, fields), locator, keep)
        except BaseException:
            self.close()
            raise

    def _add(self, row: SubmissionRow, locator: Any, keep: Collection[str] | None) -> None:
        self.n_rows += 1
        if keep is not None and row.image_id not in keep:
            self.n_other += 1
            if len(self.other_ids) < _MAX_LISTED_IDS:
                self.other_ids.append(row.image_id)
            return
        if row.image_id in self._where:
            first = self._table.where(self._where[row.image_id])
            raise SubmissionError(
                f"{self._table.name} {row.where}: repeated ID {row.image_id!r} (first at {first})"
            )
        self._where[row.image_id] = locator

    def __enter__(self) -> RowIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._table.close()

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._where

    def __len__(self) -> int:
        return len(self._where)

    def get(self, image_id: str) -> SubmissionRow | None:
        """The row of ``image_id`` (read again from the file), or None."""
        locator = self._where.get(image_id)
        if locator is None:
            return None
        where, fields = self._table.row_at(locator)
        row = _typed_row(self._table, self._positions, where, fields)
        if row.image_id != image_id:
            raise SubmissionError(f"{self._table.name} changed while it was read ({where})")
        return row


def read_sample(source: str | os.PathLike | pd.DataFrame) -> pd.DataFrame:
    """The expected ids and sizes: ``ID`` (str), ``ImageWidth``, ``ImageHeight`` (int64).

    ``source`` is a CSV path (e.g. ``sample_submission.csv``) or a DataFrame with those
    columns; a PredictionString column and other columns are ignored. Raises
    :class:`SubmissionError`, naming the line and the id, on a missing or repeated column, a
    row with the wrong number of fields, an id that breaks the id rule (empty, surrounding
    spaces, a comma, quote, ``/``, ``\\`` or ``..``...) or repeats, a size that is not
    1..MAX_SIDE, or a sample without rows.
    """
    import pandas as pd

    with _Table(source, "sample") as table:
        positions = _require_columns(
            table, _SAMPLE_COLUMNS, optional=("PredictionString",), others=True
        )
        rows = [(r.image_id, r.width, r.height) for r in _typed_rows(table, positions)]
    if not rows:
        raise SubmissionError(f"{table.name} has no rows")
    frame = pd.DataFrame(rows, columns=list(_SAMPLE_COLUMNS))
    return frame.astype({"ImageWidth": np.int64, "ImageHeight": np.int64})


def read_submission(source: str | os.PathLike | pd.DataFrame) -> pd.DataFrame:
    """A submission (or truth) table with typed sizes and text PredictionStrings.

    Checked as by :func:`iter_rows` (it does not parse the PredictionStrings; see
    :func:`validate_submission`). Holds the whole table: prefer :func:`iter_rows` for
    large files.
    """
    import pandas as pd

    rows = [
        (r.image_id, r.width, r.height, r.prediction) for r in iter_rows(source, what="submission")
    ]
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    return frame.astype({"ImageWidth": np.int64, "ImageHeight": np.int64})


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
    an empty PredictionString (no cells) or one that breaks the triplet rules (token count,
    class, confidence, mask text) gets the placeholder ``0 1 <empty mask>`` at its size, and
    the report says why. Masks are not decoded here (run :func:`validate_submission`).

    The file is written to a temporary name in the same folder, then renamed over ``path``
    (:func:`hpa_kit.outputs.atomic_write_text`): a reader never sees half a file, a failed
    write leaves ``path`` as it was, and the leftover of a killed write is removed by the next.
    """
    table = read_sample(sample)  # its ids are safe in a CSV line and as file names
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
            problems = _split_triplets(str(text))[1]
            reason = f"invalid: {problems[0]}" if problems else None
        if reason is None:
            row_text = " ".join(str(text).split())
        else:
            placeholders[image_id] = reason
            row_text = placeholder_prediction_string(int(height), int(width))
        lines.append(f"{image_id},{int(width)},{int(height)},{row_text}")
    expected = set(table["ID"])
    extra = tuple(sorted(i for i in predictions if i not in expected))
    atomic_write_text(path, "\n".join(lines) + "\n", encoding="ascii")
    return WriteReport(path=path, n_rows=len(table), placeholders=placeholders, extra=extra)


# --------------------------------------------------------------------------- validation


@dataclass(frozen=True)
class ValidationReport:
    """Problems found by :func:`validate_submission`, by image id, and a warning count.

    ``problems`` maps an id (or :data:`FILE_KEY` for the file and for rows without a usable
    id) to messages, at most 10 per id and 10 000 ids; ``n_unlisted`` counts the problems of
    further ids. ``ok`` is True when there are none. ``n_rows_without_cells`` counts rows
    that carry no cell prediction (the placeholder, only empty masks, or an empty
    PredictionString): a warning, since such rows score nothing, not a problem.
    """

    problems: dict[str, list[str]]
    n_rows: int
    n_expected: int
    n_masks_checked: int = 0
    n_rows_without_cells: int = 0
    n_unlisted: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems and not self.n_unlisted

    @property
    def warnings(self) -> list[str]:
        if not self.n_rows_without_cells:
            return []
        return [
            f"{self.n_rows_without_cells} of {self.n_rows} rows carry no cell prediction "
            "(placeholder '0 1 <empty mask>', only empty masks, or an empty PredictionString)"
        ]

    def summary(self, *, limit: int = 50) -> str:
        if self.ok:
            lines = [
                f"OK: {self.n_rows} rows match the {self.n_expected} expected ids; "
                f"{self.n_masks_checked} distinct masks decode at their stated sizes"
            ]
        else:
            n_messages = sum(len(v) for v in self.problems.values()) + self.n_unlisted
            lines = [
                f"INVALID: {n_messages} problem(s) in {len(self.problems)} id(s) "
                f"({self.n_rows} rows, {self.n_expected} expected ids)"
            ]
            for image_id, messages in list(self.problems.items())[:limit]:
                lines.extend(f"  {image_id}: {message}" for message in messages)
            if len(self.problems) > limit:
                lines.append(f"  ... and {len(self.problems) - limit} more id(s) with problems")
            if self.n_unlisted:
                lines.append(f"  ... and {self.n_unlisted} more problem(s) of ids not listed")
        lines.extend(f"warning: {w}" for w in self.warnings)
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-ready dict of the report."""
        return {
            "ok": self.ok,
            "n_rows": self.n_rows,
            "n_expected": self.n_expected,
            "n_masks_checked": self.n_masks_checked,
            "n_rows_without_cells": self.n_rows_without_cells,
            "n_unlisted": self.n_unlisted,
            "problems": self.problems,
            "warnings": self.warnings,
        }


class _Validation:
    """The state of one :func:`validate_submission` pass: problems (capped), ids seen, counts."""

    def __init__(self, sizes: Mapping[str, tuple[int, int]]) -> None:
        self.sizes = sizes  # id -> (width, height) of the sample
        self.seen: dict[str, str] = {}  # sample id -> where its first row is
        self.extra_seen: dict[str, str] = {}  # capped: repeats of extra ids beyond are not found
        self.problems: dict[str, list[str]] = {}
        self.n_unlisted = self.n_rows = self.n_masks = self.n_without_cells = 0

    def add(self, key: str, message: str) -> None:
        messages = self.problems.get(key)
        if messages is None:
            if len(self.problems) >= _MAX_LISTED_IDS:
                self.n_unlisted += 1
                return
            messages = self.problems[key] = []
        if len(messages) < _MAX_PROBLEMS_PER_ID:
            messages.append(message)
        elif len(messages) == _MAX_PROBLEMS_PER_ID:
            messages.append("(more problems not shown)")

    def row(
        self,
        where: str,
        fields: list[str] | str,
        positions: Mapping[str, int],
        header: Sequence[str],
    ) -> None:
        self.n_rows += 1
        problem = _shape_problem(fields, header)
        if problem is not None:
            guess = _field(fields, positions["ID"]).strip()
            if guess in self.sizes:
                self.seen.setdefault(guess, where)
            self.add(guess if guess in self.sizes else FILE_KEY, f"{where}: {problem}")
            return
        key = self._claim(where, fields[positions["ID"]])
        if key is None:
            return
        want = self.sizes[key]
        for column, expected in zip(("ImageWidth", "ImageHeight"), want, strict=True):
            value, problem = _read_size(fields[positions[column]], column)
            if problem is None and value != expected:
                problem = f"{column} {value}, expected {expected}"
            if problem is not None:
                self.add(key, problem)
        self._prediction(key, fields[positions["PredictionString"]], *want)

    def _claim(self, where: str, image_id: str) -> str | None:
        """The sample id of a row (after reporting a bad or repeated id), or None."""
        problem = _id_problem(image_id)
        key = image_id.strip()
        if problem is not None:
            self.add(key if key in self.sizes else FILE_KEY, f"{where}: {problem}")
        if key in self.sizes:
            first = self.seen.setdefault(key, where)
            if first != where:
                self.add(key, f"{where}: repeated ID (first at {first})")
            return key
        if problem is None:
            first = self.extra_seen.get(key)
            if first is None and len(self.extra_seen) < _MAX_LISTED_IDS:
                self.extra_seen[key] = where
            if first is None:
                self.add(key, "extra: id is not in the sample")
            else:
                self.add(key, f"{where}: repeated ID (first at {first})")
        return None

    def _prediction(self, key: str, text: str, width: int, height: int) -> None:
        if not text.strip():
            self.add(key, "empty PredictionString (write the placeholder '0 1 <empty mask>')")
            self.n_without_cells += 1
            return
        triplets, problems = _split_triplets(text, max_problems=_MAX_PROBLEMS_PER_ID + 1)
        for problem in problems:
            self.add(key, problem)
        masks: dict[str, list[int]] = {}  # each distinct mask is decoded once
        for k, triplet in enumerate(triplets):
            if triplet is not None:
                where = masks.setdefault(triplet[2], [])
                if len(where) < 5:
                    where.append(k)
        n_cells = 0
        for mask, where in masks.items():
            try:
                n_cells += mask_area(mask, height, width) > 0
            except RLEError as exc:
                self.add(key, f"triplet(s) {where}: mask {_shown(mask)!r}: {exc}")
        self.n_masks += len(masks)
        self.n_without_cells += n_cells == 0


def _field(fields: list[str] | str, position: int) -> str:
    if isinstance(fields, str) or position >= len(fields):
        return ""
    return fields[position]


def validate_submission(
    submission: str | os.PathLike | pd.DataFrame,
    sample: str | os.PathLike | pd.DataFrame,
) -> ValidationReport:
    """Check a submission against the expected ids and sizes of ``sample``.

    Reports, by id: missing, extra and repeated ids; ids that break the id rule;
    ImageWidth/ImageHeight that differ from the sample or are not written plainly; rows with
    the wrong number of fields or bad quoting (by line number); empty PredictionStrings;
    token counts that are not a multiple of 3; classes, confidences and mask texts that break
    the rules of the module docstring; masks that do not decode to exactly the sample's
    ImageHeight x ImageWidth pixels (each distinct mask string of a row is decoded once, to its
    run lengths, within the limits of :mod:`hpa_kit.rle`; pixels are never materialised).
    Column problems are reported under :data:`FILE_KEY`. Counts the rows that carry no cell
    prediction (see :class:`ValidationReport`). The submission is read one row at a time.
    Raises :class:`SubmissionError` when ``sample`` is bad or a file cannot be read as text.

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
    sizes = {i: (int(w), int(h)) for i, w, h in expected.itertuples(index=False, name=None)}
    check = _Validation(sizes)
    with _Table(submission, "submission") as table:
        positions, problem = _column_positions(table.header, COLUMNS)
        if problem is not None:
            check.add(FILE_KEY, f"{table.name}: {problem}")
            check.n_rows = sum(1 for _ in table.rows())
        else:
            for where, _, fields in table.rows():
                check.row(where, fields, positions, table.header)
    if problem is None:
        for image_id in sizes:
            if image_id not in check.seen:
                check.add(image_id, "missing: id of the sample has no row")
    return ValidationReport(
        problems=check.problems,
        n_rows=check.n_rows,
        n_expected=len(sizes),
        n_masks_checked=check.n_masks,
        n_rows_without_cells=check.n_without_cells,
        n_unlisted=check.n_unlisted,
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

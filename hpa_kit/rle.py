"""The competition's mask encoding: binary masks and label images to text and back.

Data contract
-------------
- A *binary mask* is a 2-D array of shape ``(height, width)`` (rows first), dtype ``bool`` or
  an integer dtype holding only 0 and 1. Any memory order is accepted; nothing is modified.
- A *label image* is a 2-D integer array, 0 = background, 1..N = cells. Ids need not be
  contiguous (skipped ids are fine) and one id may cover several separate pieces.
- A *size* is always ``(height, width)``, height first, as in pycocotools' ``"size"``.
- *Mask text* (what goes into a PredictionString) is built exactly as the competition's
  reference code builds it (REFERENCE.md section 1):

  1. Read the mask's pixels in column-major (Fortran) order: down column 0, then column 1, ...
  2. ``counts`` = the lengths of the alternating runs of 0s and 1s in that sequence, starting
     with a run of 0s (which has length 0 when pixel (0, 0) is set). Runs are never empty
     otherwise and they sum to ``height * width``. For ``[0 0 1 1 1 0 1]`` counts are
     ``[2, 3, 1, 1]``.
  3. pycocotools compresses ``counts`` into its LEB128-like ASCII string (6-bit groups, offset 48;
     from the fourth count on, each count is stored as the difference to the count two before).
  4. That string is compressed with zlib at level 9 (``Z_BEST_COMPRESSION``).
  5. The zlib bytes are base64-encoded; the ASCII text is the mask text.

  Decoding reverses the steps. The empty (all-False) mask has a fixed text per size, for example
  ``eNoLCAgIMAEABJkBdQ==`` at 2048x2048.
- *Limits of decoding* (what no real mask exceeds, so that hostile text costs bounded memory):
  the zlib data may expand to at most :func:`max_counts_bytes` (``2 * height * width + 16``
  bytes); the counts may hold at most ``height * width + 1`` runs, each at most
  ``height * width`` long. Anything beyond is an :class:`RLEError`, found before the runs are
  materialised.
- A *COCO RLE* (:func:`to_coco_rle`) is pycocotools' ``{"size": [height, width], "counts":
  bytes}`` (the step-3 string), usable with ``pycocotools.mask.iou/area/toBbox``.

:func:`encode_label_image` encodes every cell of a label image in one pass: it compares each pixel
with the one above it, so the column-major runs of every label come out of the positions where
the label changes (plus the top of each column); it never builds a full-size mask per cell, and
it does no per-pixel work per cell. Its output is byte-identical to calling
:func:`encode_binary_mask` on ``labels == i`` for each cell ``i``.

>>> mask = np.array([[0, 1, 1],
...                  [0, 1, 0]], dtype=bool)
>>> text = encode_binary_mask(mask)
>>> text
'eNozMjYEAAEwAJc='
>>> to_coco_rle(text, 2, 3)["counts"]  # column-major runs [2, 3, 1] in pycocotools' string form
b'231'
>>> decode_binary_mask(text, 2, 3).astype(int).tolist()
[[0, 1, 1], [0, 1, 0]]
>>> encode_label_image(np.array([[0, 2, 2], [0, 2, 0]])) == {2: text}
True
>>> empty_mask_string(2048, 2048)
'eNoLCAgIMAEABJkBdQ=='
"""

from __future__ import annotations

import base64
import binascii
import functools
import threading
import zlib
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

import numpy as np

__all__ = [
    "RLEError",
    "decode_binary_mask",
    "decoded_cache_info",
    "empty_mask_string",
    "encode_binary_mask",
    "encode_label_image",
    "mask_area",
    "mask_counts",
    "max_counts_bytes",
    "to_coco_rle",
]


class RLEError(ValueError):
    """A mask, label image, size or mask text that does not follow the data contract."""


def _coco_mask() -> Any:
    try:
        import pycocotools.mask as coco_mask
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "hpa_kit.rle needs pycocotools: pip install pycocotools (or hpa_kit's requirements)"
        ) from error
    return coco_mask


_MAX_PIXELS = 2**31 - 1
"""Largest ``height * width`` accepted: pycocotools stores runs as 32-bit integers, and this
margin keeps every sum of runs within int64."""
_MAX_RUN = 2**32 - 1


def _check_size(height: int, width: int) -> tuple[int, int]:
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise RLEError(f"{name} must be an int, got {type(value).__name__}: {value!r}")
        if value < 1:
            raise RLEError(f"{name} must be >= 1, got {value}")
    if int(height) * int(width) > _MAX_PIXELS:
        raise RLEError(f"height*width = {height}*{width} is more than {_MAX_PIXELS} pixels")
    return int(height), int(width)


def _check_mask(mask: np.ndarray) -> np.ndarray:
    array = np.asarray(mask)
    if array.ndim != 2:
        raise RLEError(f"binary mask must be 2-D (height, width), got shape {array.shape}")
    if array.size == 0:
        raise RLEError(f"binary mask is empty: shape {array.shape}")
    if array.dtype == np.bool_:
        return array
    if not np.issubdtype(array.dtype, np.integer):
        raise RLEError(f"binary mask must be bool or integer 0/1, got dtype {array.dtype}")
    if array.min() < 0 or array.max() > 1:
        raise RLEError(
            f"integer binary mask must hold only 0 and 1, got values in "
            f"[{array.min()}, {array.max()}] (dtype {array.dtype}); for a label image use "
            "encode_label_image"
        )
    return array


def _text_from_coco_counts(counts: bytes) -> str:
    return base64.b64encode(zlib.compress(counts, zlib.Z_BEST_COMPRESSION)).decode("ascii")


def max_counts_bytes(height: int, width: int) -> int:
    """Longest pycocotools counts string (step 3) that a ``height x width`` mask can need.

    Each run costs at most as many characters as it has pixels, and so does the difference
    to the run two before it, so no mask needs more than ``2 * height * width`` characters
    (the empty mask needs 1, a checkerboard about ``height * width``). Decoding stops at this
    many bytes: a few hundred bytes of zlib data can otherwise expand to gigabytes.

    >>> max_counts_bytes(2048, 2048)
    8388624
    """
    height, width = _check_size(height, width)
    return 2 * height * width + 16


def _coco_counts_from_text(text: str | bytes, max_bytes: int) -> bytes:
    if isinstance(text, str):
        try:
            raw = text.strip().encode("ascii")
        except UnicodeEncodeError as error:
            raise RLEError(f"mask text must be ASCII base64, got {text[:40]!r}") from error
    elif isinstance(text, bytes):
        raw = text.strip()
    else:
        raise RLEError(f"mask text must be str or bytes, got {type(text).__name__}")
    if not raw:
        raise RLEError("mask text is empty")
    try:
        compressed = base64.b64decode(raw, validate=True)
    except binascii.Error as error:
        raise RLEError(f"mask text is not valid base64: {raw[:40]!r}: {error}") from error
    inflater = zlib.decompressobj()
    try:
        counts = inflater.decompress(compressed, max_bytes + 1)
    except zlib.error as error:
        raise RLEError(f"mask text is not zlib-compressed data: {raw[:40]!r}: {error}") from error
    if len(counts) > max_bytes:
        raise RLEError(
            f"mask text {raw[:40]!r} decompresses to more than {max_bytes} bytes, more than "
            "any mask of this size needs (a zlib bomb?)"
        )
    if not inflater.eof:
        raise RLEError(f"mask text is not zlib-compressed data: {raw[:40]!r}: truncated stream")
    return counts


_PARSE_CHUNK = 1 << 20
"""Values parsed per vectorised step: bounds the int64 temporaries to a few MB."""


def _parse_values(chars: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Signed values of counts characters (``chars`` already minus 48), before the differences.

    Vectorised in chunks of values: each character carries 5 value bits (``& 0x1f``), a
    continuation bit (``0x20``) and, on a value's last character, a sign bit (``0x10``).
    """
    values = np.empty(ends.size, dtype=np.int64)
    for a in range(0, ends.size, _PARSE_CHUNK):
        b = min(a + _PARSE_CHUNK, ends.size)
        lo = 0 if a == 0 else int(ends[a - 1]) + 1
        part = chars[lo : int(ends[b - 1]) + 1].astype(np.int64)
        last = ends[a:b] - lo
        starts = np.concatenate(([0], last[:-1] + 1))
        shift = 5 * (np.arange(part.size) - np.repeat(starts, last - starts + 1))
        chunk = np.add.reduceat((part & 0x1F) << shift, starts)
        negative = (part[last] & 0x10) != 0
        chunk[negative] -= np.int64(1) << (shift[last[negative]] + 5)
        values[a:b] = chunk
    return values


def _parse_coco_counts(data: bytes, total: int) -> np.ndarray:
    """Run lengths (int64) of a pycocotools counts string covering ``total`` pixels.

    Inverse of step 3: from the fourth value on, a value is the difference to the value two
    before it. At most ``total + 1`` runs (one per pixel and the leading run of 0s) and
    values of at most ``total`` in size are accepted, so nothing overflows.
    """
    chars = np.frombuffer(data, dtype=np.uint8) - np.uint8(48)  # wraps below 48: > 63
    if chars.size == 0:
        return np.zeros(0, dtype=np.int64)
    bad = chars > 63
    if bad.any():
        char = chr(data[int(np.argmax(bad))])
        raise RLEError(f"bad character {char!r} in counts string {data[:40]!r}")
    last = (chars & 0x20) == 0  # the last character of each value
    if not last[-1]:
        raise RLEError(f"truncated counts string {data[:40]!r}")
    ends = np.flatnonzero(last)
    if ends.size > total + 1:
        raise RLEError(f"counts string {data[:40]!r} holds {ends.size} runs, more than pixels")
    if int(np.diff(ends, prepend=-1).max()) > 11:
        raise RLEError(f"counts string {data[:40]!r} holds a value longer than 11 characters")
    values = _parse_values(chars, ends)
    if int(np.abs(values).max()) > _MAX_RUN:
        raise RLEError(f"counts string {data[:40]!r} holds a value beyond 32-bit run lengths")
    # Undo the differences: counts[i] = values[i] + counts[i - 2] for i >= 3. No overflow:
    # at most 2**30 values per parity, each below 2**32.
    values[3::2] = np.cumsum(values[1::2])[1:]
    values[4::2] = np.cumsum(values[2::2])[1:]
    # Zero-length runs never come out of pycocotools' encoder, but they decode unambiguously
    # (pycocotools accepts them too), so only negative runs are errors.
    if values.min() < 0:
        raise RLEError(f"counts string {data[:40]!r} holds a negative run")
    return values


def _covered(runs: np.ndarray, total: int) -> int:
    """Pixels covered by ``runs``: exact when no run exceeds ``total``, else a float estimate
    (then above ``total`` anyway), so that hostile runs cannot overflow the sum."""
    if runs.size == 0:
        return 0
    if int(runs.max()) <= total:
        return int(runs.sum())  # at most (total + 1) * total < 2**62
    return int(runs.sum(dtype=np.float64))


class _ByteBoundedCache:
    """Least-recently-used cache whose entries total at most ``max_bytes`` (thread-safe).

    An entry larger than a quarter of the budget is not kept.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def info(self) -> tuple[int, int, int]:
        with self._lock:
            return len(self._entries), self.nbytes, self.max_bytes

    def put(self, key: Hashable, value: Any, nbytes: int) -> None:
        if nbytes > self.max_bytes // 4:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.nbytes -= old[1]
            self._entries[key] = (value, nbytes)
            self.nbytes += nbytes
            while self.nbytes > self.max_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self.nbytes -= dropped


_DECODED = _ByteBoundedCache(32 * 2**20)
"""Decoded masks, by (text, height, width): a PredictionString repeats a cell's mask once per
class, and the placeholder's text repeats on every row of its size."""


def decoded_cache_info() -> tuple[int, int, int]:
    """``(entries, bytes, max bytes)`` of the cache of decoded mask texts.

    The cache holds recently decoded masks (a PredictionString repeats each cell's mask once
    per class) and is bounded by bytes, not by entries: a mask larger than a quarter of the
    budget is never kept.

    >>> decoded_cache_info()[2]
    33554432
    """
    return _DECODED.info()


def _checked_counts(text: str | bytes, height: int, width: int) -> tuple[bytes, np.ndarray]:
    """(pycocotools counts string, read-only runs) of a mask text covering height x width."""
    key = (text, height, width)
    cached = _DECODED.get(key)
    if cached is not None:
        return cached
    total = height * width
    counts = _coco_counts_from_text(text, max_counts_bytes(height, width))
    runs = _parse_coco_counts(counts, total)
    covered = _covered(runs, total)
    if covered != total:
        raise RLEError(
            f"mask text covers {covered} pixels, expected height*width = {height}*{width} = {total}"
        )
    runs.flags.writeable = False
    _DECODED.put(key, (counts, runs), len(text) + len(counts) + runs.nbytes)
    return counts, runs


def _checked(text: str | bytes, height: int, width: int) -> tuple[bytes, np.ndarray]:
    if not isinstance(text, (str, bytes)):
        raise RLEError(f"mask text must be str or bytes, got {type(text).__name__}")
    height, width = _check_size(height, width)
    return _checked_counts(text, height, width)


def mask_counts(text: str | bytes, height: int, width: int) -> np.ndarray:
    """Run lengths (int64, column-major, starting with 0s) of a mask text; validated.

    >>> mask_counts("eNozMjYEAAEwAJc=", 2, 3).tolist()
    [2, 3, 1]
    """
    return _checked(text, height, width)[1].copy()


def mask_area(text: str | bytes, height: int, width: int) -> int:
    """Number of set pixels of a mask text (validated like :func:`mask_counts`, no pixels made).

    >>> mask_area("eNozMjYEAAEwAJc=", 2, 3), mask_area(empty_mask_string(2, 3), 2, 3)
    (3, 0)
    """
    return int(_checked(text, height, width)[1][1::2].sum())


def encode_binary_mask(mask: np.ndarray) -> str:
    """Mask text of a 2-D bool (or integer 0/1) mask, exactly as the competition builds it.

    >>> encode_binary_mask(np.zeros((1728, 1728), dtype=bool))
    'eNoLCAjJNgIABNkBkg=='
    """
    array = _check_mask(mask)
    fortran = np.asfortranarray(array.astype(np.uint8, copy=False)[:, :, None])
    counts = _coco_mask().encode(fortran)[0]["counts"]
    return _text_from_coco_counts(counts)


def decode_binary_mask(text: str | bytes, height: int, width: int) -> np.ndarray:
    """The ``(height, width)`` bool mask (C order) of a mask text.

    Raises :class:`RLEError` when the text is not base64/zlib/counts data or does not cover
    exactly ``height * width`` pixels.

    >>> decode_binary_mask(empty_mask_string(3, 2), 3, 2).any()
    np.False_
    """
    runs = _checked(text, height, width)[1]
    height, width = int(height), int(width)
    values = np.zeros(runs.size, dtype=bool)
    values[1::2] = True
    column_major = np.repeat(values, runs)
    return np.ascontiguousarray(column_major.reshape(width, height).T)


def to_coco_rle(text: str | bytes, height: int, width: int) -> dict:
    """pycocotools RLE ``{"size": [height, width], "counts": bytes}`` of a mask text (validated).

    >>> to_coco_rle(empty_mask_string(2, 2), 2, 2)
    {'size': [2, 2], 'counts': b'4'}
    """
    counts = _checked(text, height, width)[0]
    height, width = int(height), int(width)
    return {"size": [height, width], "counts": counts}


def _text_from_runs(runs: np.ndarray, height: int, width: int) -> str:
    coco = _coco_mask().frPyObjects({"size": [height, width], "counts": runs}, height, width)
    return _text_from_coco_counts(coco["counts"])


def empty_mask_string(height: int, width: int) -> str:
    """Mask text of the all-False ``(height, width)`` mask (built from its one run, no pixels).

    >>> empty_mask_string(3072, 3072)
    'eNoLCAgIsAQABJ4Beg=='
    """
    return _empty_mask_string(*_check_size(height, width))  # checked before the cache: 2.0 == 2


@functools.lru_cache(maxsize=64)
def _empty_mask_string(height: int, width: int) -> str:
    return _text_from_runs(np.array([height * width], dtype=np.int64), height, width)


def _check_labels(labels: np.ndarray) -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim != 2:
        raise RLEError(f"label image must be 2-D (height, width), got shape {array.shape}")
    if array.size == 0:
        raise RLEError(f"label image is empty: shape {array.shape}")
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
        raise RLEError(
            f"label image must have an integer dtype (0 = background, 1..N = cells), got "
            f"{array.dtype}; for one bool mask use encode_binary_mask"
        )
    if np.issubdtype(array.dtype, np.signedinteger) and array.min() < 0:
        raise RLEError(f"label image holds negative labels (min {array.min()})")
    return array


def _label_runs(array: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ids, starts, ends)`` of every maximal column-major run of a nonzero label.

    Positions are column-major pixel indices (``col * height + row``), ``ends`` exclusive; the
    runs are sorted by id, then by position. Cost: one comparison of each pixel with the one
    above it, then work proportional to the number of label changes down the columns.
    """
    height, width = array.shape
    changed = np.flatnonzero(array[1:] != array[:-1])  # flat index into (height - 1, width)
    rows = changed // width + 1
    cols = changed % width
    # A run starts where the label changes down a column, and (at the latest) at each row 0.
    starts = np.concatenate((cols * height + rows, np.arange(width, dtype=np.int64) * height))
    ids = np.concatenate((array[rows, cols], array[0]))
    order = np.argsort(starts)
    starts, ids = starts[order], ids[order]
    ends = np.append(starts[1:], height * width)
    cell = ids != 0
    starts, ends, ids = starts[cell], ends[cell], ids[cell]
    order = np.argsort(ids, kind="stable")
    starts, ends, ids = starts[order], ends[order], ids[order]
    # A run reaching the bottom of a column continues at the top of the next column.
    joined = (ids[1:] == ids[:-1]) & (ends[:-1] == starts[1:])
    if joined.any():
        first = np.concatenate(([True], ~joined))
        last = np.concatenate((~joined, [True]))
        starts, ends, ids = starts[first], ends[last], ids[first]
    return ids, starts, ends


def encode_label_image(labels: np.ndarray) -> dict[int, str]:
    """Mask text of every cell of a label image, ``{cell id: text}`` with ids ascending.

    One vectorised pass over the image finds where the label changes down each column; every
    cell's runs follow from those changes, so the work per cell is proportional to its number of
    runs, not to its area or to the image size. Byte-identical to
    ``encode_binary_mask(labels == i)`` for each id ``i`` present. An image without cells gives
    ``{}``. Any integer dtype; ids need not be contiguous; one id may be several pieces.

    >>> encode_label_image(np.array([[1, 0, 3]], dtype=np.int32))
    {1: 'eNozMDQCAAEnAJQ=', 3: 'eNozMgQAAJcAZA=='}
    """
    array = _check_labels(labels)
    height, width = array.shape
    total = height * width
    ids, starts, ends = _label_runs(array)
    if ids.size == 0:
        return {}
    first = np.flatnonzero(np.concatenate(([True], ids[1:] != ids[:-1])))
    stop = np.append(first[1:], ids.size)
    # counts of one cell: [gap, run, gap, run, ..., tail]; a gap is measured from the previous
    # run of the same cell (from pixel 0 for its first run), the tail is dropped when 0.
    previous_end = np.concatenate(([0], ends[:-1]))
    previous_end[first] = 0
    counts = np.empty(2 * ids.size, dtype=np.int64)
    counts[0::2] = starts - previous_end
    counts[1::2] = ends - starts
    out: dict[int, str] = {}
    for a, b in zip(first.tolist(), stop.tolist(), strict=True):
        runs = counts[2 * a : 2 * b]
        tail = total - int(ends[b - 1])
        if tail:
            runs = np.append(runs, tail)
        out[int(ids[a])] = _text_from_runs(runs, height, width)
    return out

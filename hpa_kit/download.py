"""Extra training images from the Human Protein Atlas (the list ``kaggle_2021.tsv``).

The list
--------
One row per image with (at least) the columns ``Image`` (a URL stem such as
``https://images.proteinatlas.org/10005/921_B9_1``), ``Label_idx`` (class indices of the
competition joined by ``|``, e.g. ``0|16``; empty when none of the image's locations is a
competition class), ``Cellline`` and ``in_trainset`` (``True``/``False``). Despite its name the
published file is read by the public kernels with ``pd.read_csv`` (comma-separated); both tab-
and comma-separated files are accepted (sniffed from the header line), and ``Label_idx`` may
use ``|`` or ``,`` between indices. Repeated indices (several locations mapped to one class, e.g.
``17|17``) are merged.

Selection (:func:`select_public_images`, as the seed solution did): ``in_trainset`` false, a
non-empty ``Label_idx`` and a cell line in :data:`CELL_LINES`. The image id is the stem's last
part (``921_B9_1``). Rows with the same stem are one image (the list has one row per gene; their
labels are merged). Two different stems with the same id, an unparseable ``Label_idx`` or
``in_trainset`` are *rejected*: reported as failures, never dropped silently.

Download (:func:`download_public`)
----------------------------------
Each channel is ``{stem}_{color}.tif.gz``: a gzip of a 16-bit greyscale TIFF. It is fetched
(urllib, threads), decompressed, decoded with ``cv2.imdecode``, converted to 8 bits by the rule
of :func:`hpa_kit.io.to_uint8` (``(v + 128) // 257``), area-resized to ``size`` and written as
``dst/{id}_{color}.png`` via :func:`hpa_kit.io.write_channels` (temporary name, then rename).

- Retries (:class:`RetryPolicy`): connection errors, timeouts, truncated bodies and HTTP 408,
  429 and 5xx are retried up to ``attempts`` tries in all, sleeping ``backoff * 2**k`` seconds
  (capped at ``max_backoff``) before retry ``k + 1``. Other HTTP errors (404, 403, ...) and
  corrupt content (bad gzip, undecodable TIFF, wrong dtype or shape) fail the id at once: a
  server that answered 200 with bad bytes does so again. A later run retries every failed id.
- Resume: an id is done when its four PNGs exist; such ids are skipped without any request.
  An id that was interrupted fetches only its missing channels.
- Labels: ``labels_csv`` (default ``dst/labels.csv``) gets ``ID,Label`` (``|``-joined
  ascending indices) for every selected id whose four PNGs exist at the end, in list order.
  It is written atomically (:func:`hpa_kit.outputs.atomic_write_text`), and an existing file
  that is not such a labels CSV is refused (:class:`hpa_kit.errors.UsageError`), never
  overwritten. The leftover temporary file of a killed write (the labels CSV or a PNG) is
  removed by the next run's first write into its folder (:func:`hpa_kit.outputs.atomic_path`).
- Threads: the downloads run through :func:`hpa_kit.runner.run_jobs` (``workers`` threads).
"""

from __future__ import annotations

import functools
import gzip
import http.client
import os
import re
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from hpa_kit.batch import BatchReport
from hpa_kit.errors import UsageError
from hpa_kit.folds import canonical_labels
from hpa_kit.labels import LabelError
from hpa_kit.prepare import MAX_SIDE
from hpa_kit.runner import check_number

__all__ = [
    "CELL_LINES",
    "PUBLIC_HOST",
    "DownloadError",
    "PublicSelection",
    "RetryPolicy",
    "decode_tif_gz",
    "download_public",
    "fetch_bytes",
    "public_image_url",
    "read_public_list",
    "select_public_images",
]

PUBLIC_HOST = "https://images.proteinatlas.org"

# The 17 cell lines of the competition's images (REFERENCE.md section 2).
CELL_LINES: tuple[str, ...] = (
    "A-431",
    "A549",
    "EFO-21",
    "HAP1",
    "HEK 293",
    "HUVEC TERT2",
    "HaCaT",
    "HeLa",
    "PC-3",
    "RH-30",
    "RPTEC TERT1",
    "SH-SY5Y",
    "SK-MEL-30",
    "SiHa",
    "U-2 OS",
    "U-251 MG",
    "hTCEpi",
)

_REQUIRED = ("Image", "Label_idx", "Cellline", "in_trainset")
_HOST_PREFIX = re.compile(r"^https?://images\.proteinatlas\.org(?=/|$)")
_RETRY_STATUS = frozenset({408, 429})
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})
_ALREADY_DONE = "already done"
_MAX_ATTEMPTS = 100
_MAX_SECONDS = 3600.0  # an hour per request or per wait is already more than patient


class DownloadError(OSError):
    """A file that could not be fetched (HTTP error, or network errors on every attempt)."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently one file is fetched.

    ``attempts`` tries in all (>= 1); before retry ``k + 1`` (k = 0, 1, ...) sleep
    ``min(backoff * 2**k, max_backoff)`` seconds; ``timeout`` seconds per request.

    >>> [RetryPolicy(backoff=1.0, max_backoff=3.0).delay(k) for k in range(4)]
    [1.0, 2.0, 3.0, 3.0]
    """

    attempts: int = 4
    backoff: float = 1.0
    max_backoff: float = 30.0
    timeout: float = 60.0

    def __post_init__(self) -> None:
        check_number("attempts", self.attempts, low=1, high=_MAX_ATTEMPTS, integer=True)
        check_number("backoff", self.backoff, low=0, high=_MAX_SECONDS)
        check_number("max_backoff", self.max_backoff, low=0, high=_MAX_SECONDS)
        check_number("timeout", self.timeout, low=0, high=_MAX_SECONDS, above=True)

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry ``retry + 1``."""
        return float(min(self.backoff * 2.0**retry, self.max_backoff))


@dataclass(frozen=True)
class PublicSelection:
    """Result of :func:`select_public_images`.

    ``images``: DataFrame with columns ``ID``, ``Image`` (stem), ``Label`` (canonical
    ``"0|16"``), ``Cellline``, one row per image, in list order. ``rejected``: key -> cause for
    rows that should have been kept but cannot be (key: the id, or ``"{id} ({stem})"`` for a
    second stem with an id already taken, or ``"row N"``). ``excluded``: number of list rows
    left out by the filter (in the training set, no competition label, other cell line).
    """

    images: pd.DataFrame
    rejected: dict[str, str] = field(default_factory=dict)
    excluded: int = 0


def read_public_list(path: str | os.PathLike) -> pd.DataFrame:
    """The public image list as a table of strings (tab- or comma-separated, sniffed).

    Raises :class:`hpa_kit.errors.UsageError` when the file is missing or lacks a column.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"public image list not found: {path}")
    with path.open(newline="") as handle:
        header = handle.readline()
    sep = "\t" if "\t" in header else ","
    table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    missing = [c for c in _REQUIRED if c not in table.columns]
    if missing:
        raise UsageError(
            f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(table.columns)}; "
            f"separator {sep!r})"
        )
    return table


def _flag(value: object) -> bool | None:
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    return None


def select_public_images(
    table: pd.DataFrame, *, cell_lines: Sequence[str] = CELL_LINES
) -> PublicSelection:
    """Rows to download from the public list (see the module docstring for the rules).

    >>> table = pd.DataFrame({
    ...     "Image": ["https://images.proteinatlas.org/1/2_A1_1", "https://x/3/4_B2_1"],
    ...     "Label_idx": ["16|0|16", "5"], "Cellline": ["A-431", "A-431"],
    ...     "in_trainset": ["False", "True"]})
    >>> selection = select_public_images(table)
    >>> selection.images[["ID", "Label"]].values.tolist(), selection.excluded
    ([['2_A1_1', '0|16']], 1)
    """
    missing = [c for c in _REQUIRED if c not in table.columns]
    if missing:
        raise UsageError(f"public image list lacks column(s) {', '.join(missing)}")
    lines = set(cell_lines)
    rejected: dict[str, str] = {}
    excluded = 0
    kept: dict[str, dict[str, object]] = {}  # stem -> row
    id_to_stem: dict[str, str] = {}
    for row, (stem, label_idx, cell_line, in_trainset) in enumerate(
        zip(*(table[c].tolist() for c in _REQUIRED), strict=True)
    ):
        stem = str(stem).strip().rstrip("/")
        label_text = str(label_idx).strip()
        if label_text.lower() == "nan":
            label_text = ""
        if not label_text or str(cell_line).strip() not in lines:
            excluded += 1
            continue
        flag = _flag(in_trainset)
        if flag is True:
            excluded += 1
            continue
        image_id = stem.rsplit("/", 1)[-1]
        if not image_id or "/" not in stem:
            rejected[f"row {row}"] = f"Image {stem!r} is not a URL stem such as {PUBLIC_HOST}/1/2"
            continue
        key = image_id
        if flag is None:
            rejected[key] = f"row {row}: in_trainset is {in_trainset!r}, expected True or False"
            continue
        try:
            labels = canonical_labels(label_text)
        except LabelError as exc:
            rejected[key] = f"row {row}: bad Label_idx: {exc}"
            continue
        if image_id in id_to_stem and id_to_stem[image_id] != stem:
            rejected[f"{image_id} ({stem})"] = (
                f"row {row}: id {image_id} already taken by {id_to_stem[image_id]}"
            )
            continue
        if stem in kept:  # one row per gene: the same image again, merge its labels
            merged = f"{kept[stem]['Label']}|{labels}"
            kept[stem]["Label"] = canonical_labels(merged)
            continue
        id_to_stem[image_id] = stem
        kept[stem] = {"ID": image_id, "Image": stem, "Label": labels, "Cellline": cell_line}
    images = pd.DataFrame(list(kept.values()), columns=["ID", "Image", "Label", "Cellline"])
    for key in [k for k in rejected if k in id_to_stem]:  # an id both kept and rejected
        rejected[f"{key} (rejected row)"] = rejected.pop(key)
    return PublicSelection(images=images, rejected=rejected, excluded=excluded)


def public_image_url(stem: str, color: str, *, base_url: str | None = None) -> str:
    """``{stem}_{color}.tif.gz``, with ``base_url`` in place of the HPA host when given.

    >>> public_image_url("https://images.proteinatlas.org/10005/921_B9_1", "red",
    ...                  base_url="http://127.0.0.1:8000/")
    'http://127.0.0.1:8000/10005/921_B9_1_red.tif.gz'
    """
    if base_url is not None:
        rest, count = _HOST_PREFIX.subn("", stem)
        if count == 0:
            raise ValueError(f"stem {stem!r} does not start with {PUBLIC_HOST}; cannot rebase it")
        stem = base_url.rstrip("/") + rest
    return f"{stem}_{color}.tif.gz"


def fetch_bytes(
    url: str, *, retry: RetryPolicy = RetryPolicy(), sleep: Callable[[float], None] = time.sleep
) -> bytes:
    """The body of ``url``, retried on network errors, 408, 429 and 5xx (see the module doc).

    Raises :class:`DownloadError` naming the URL, the last error and the number of attempts.
    """
    last = ""
    for attempt in range(retry.attempts):
        if attempt:
            sleep(retry.delay(attempt - 1))
        try:
            with urllib.request.urlopen(url, timeout=retry.timeout) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code} {exc.reason}"
            if exc.code not in _RETRY_STATUS and exc.code < 500:
                raise DownloadError(f"{last}: {url}") from exc
        except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts, resets
            last = f"{type(exc).__name__}: {exc}"
    raise DownloadError(f"{last} (gave up after {retry.attempts} attempt(s)): {url}")


def decode_tif_gz(data: bytes, *, source: str = "<bytes>") -> np.ndarray:
    """A gzip of a greyscale 8- or 16-bit TIFF as a 2-D array (dtype kept).

    Raises :class:`hpa_kit.io.CorruptImageError` for a bad gzip or an undecodable image and
    :class:`hpa_kit.io.ImageShapeError` for several planes or another dtype; both name
    ``source``.
    """
    import cv2

    from hpa_kit.io import CorruptImageError, ImageShapeError

    try:
        raw = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise CorruptImageError(f"not a valid gzip file ({exc}): {source}") from exc
    image = cv2.imdecode(np.frombuffer(raw, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise CorruptImageError(f"cannot decode the image inside the gzip file: {source}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim != 2 or image.dtype not in (np.uint8, np.uint16):
        raise ImageShapeError(
            f"expected a 2-D 8- or 16-bit greyscale image, got shape {image.shape} "
            f"dtype {image.dtype}: {source}"
        )
    return image


def _download_one(
    dst: Path,
    size: int,
    base_url: str | None,
    retry: RetryPolicy,
    sleep: Callable[[float], None],
    image_id: str,
    stem: str,
) -> None:
    """Fetch the missing channels of one id (an error is recorded by the runner)."""
    from hpa_kit.io import CHANNELS, channel_path, resize_area, to_uint8, write_channels

    for color in CHANNELS:
        if channel_path(dst, image_id, color).exists():
            continue
        url = public_image_url(stem, color, base_url=base_url)
        plane = decode_tif_gz(fetch_bytes(url, retry=retry, sleep=sleep), source=url)
        small = resize_area(to_uint8(plane), size)
        write_channels(dst, image_id, small[:, :, None], channels=(color,))


def _check_labels_csv(path: Path) -> None:
    """The labels CSV can be written, and an existing one is ours (``ID,Label`` header)."""
    from hpa_kit.outputs import check_output_file

    check_output_file(path, what="the labels CSV")
    if path.is_file() and path.stat().st_size > 0:
        with open(path, "rb") as handle:
            first = handle.readline(4096).strip()
        if first != b"ID,Label":
            raise UsageError(
                f"the labels CSV {path} exists and is not one (its first line is not ID,Label); "
                "it is left untouched: pass another --labels-csv"
            )


def download_public(
    list_tsv: str | os.PathLike | pd.DataFrame,
    dst: str | os.PathLike,
    *,
    size: int = 1024,
    workers: int = 8,
    base_url: str | None = None,
    retry: RetryPolicy = RetryPolicy(),
    labels_csv: str | os.PathLike | None = None,
    progress: bool = True,
) -> BatchReport:
    """Download, convert and cache the selected public HPA images; resumable.

    ``list_tsv``: the list file (or its table, as :func:`read_public_list` returns it).
    ``size``: output side in pixels. ``workers``: download threads. ``base_url`` replaces
    ``https://images.proteinatlas.org`` in the stems (a mirror, a test server). Returns a
    :class:`~hpa_kit.batch.BatchReport`: done (fetched now), skipped (``"already done"``) and
    failed (id -> cause, rejected list rows included). Writes ``labels_csv`` (default
    ``dst/labels.csv``) even when some ids failed. Bad options, a missing list and a labels
    CSV that cannot be written raise :class:`hpa_kit.errors.UsageError` before any request.
    """
    from hpa_kit.io import CHANNELS, channel_path
    from hpa_kit.outputs import atomic_write_text
    from hpa_kit.runner import MAX_WORKERS, RunnerOptions, Stage, run_jobs

    check_number("size", size, low=1, high=MAX_SIDE, integer=True)
    check_number("workers", workers, low=1, high=MAX_WORKERS, integer=True)
    table = list_tsv if isinstance(list_tsv, pd.DataFrame) else read_public_list(list_tsv)
    selection = select_public_images(table)
    dst = Path(dst)
    labels_path = dst / "labels.csv" if labels_csv is None else Path(labels_csv)
    dst.mkdir(parents=True, exist_ok=True)
    _check_labels_csv(labels_path)

    def complete(image_id: str) -> bool:
        return all(channel_path(dst, image_id, c).exists() for c in CHANNELS)

    report = BatchReport()
    for key, cause in selection.rejected.items():
        report.add_failure(key, cause)
    todo: dict[str, str] = {}
    for image_id, stem in zip(selection.images["ID"], selection.images["Image"], strict=True):
        if complete(image_id):
            report.add_skipped(image_id, _ALREADY_DONE)
        else:
            todo[image_id] = stem
    options = RunnerOptions(
        workers=workers,
        executor="thread",
        ordered=False,
        progress=progress,
        desc="download-public",
        unit="image",
    )
    job = [Stage(functools.partial(_download_one, dst, size, base_url, retry, time.sleep))]
    for result in run_jobs(todo, job, options):
        report.add_result(result.id, result.error)

    finished = selection.images[[complete(i) for i in selection.images["ID"]]]
    atomic_write_text(labels_path, finished[["ID", "Label"]].to_csv(index=False))
    return report

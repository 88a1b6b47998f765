"""Image cache: per-channel PNGs at one fixed size, made from 8- or 16-bit sources.

Layout: ``src/{id}_{color}.{png,tif,tiff}`` (one greyscale file per channel, as the competition
and the HPA public images ship them) becomes ``dst/{id}_{color}.png``, ``uint8``, resized to
``size`` (``n`` means ``n x n``; ``(height, width)`` otherwise) with area interpolation.
Pixels go through :mod:`hpa_kit.io`: :func:`~hpa_kit.io.read_channel` (16-bit to 8-bit by the
one rule of :func:`~hpa_kit.io.to_uint8`, before resizing), :func:`~hpa_kit.io.resize_area`,
and :func:`~hpa_kit.io.write_channels` (temporary name, then rename).

Resuming: an output file that exists is finished (it is only ever created by a rename), so it
is neither read nor written again; an id whose channels all exist is reported as skipped. A run
killed part-way leaves at worst a hidden temporary file, never a truncated ``{id}_{color}.png``.

Failures (missing channel, unreadable file, ...) are recorded per id with their cause in the
returned :class:`~hpa_kit.batch.BatchReport`; the other ids go on.

Parallelism: ``workers > 1`` converts ids in that many *spawned* processes (each sets OpenCV to
one thread); ``workers == 1`` works in the calling process.
"""

from __future__ import annotations

import multiprocessing
import os
import re
from collections.abc import Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from hpa_kit.batch import BatchReport
from hpa_kit.io import size_pair

__all__ = ["SOURCE_EXTENSIONS", "find_sources", "prepare_images"]

SOURCE_EXTENSIONS: tuple[str, ...] = (".png", ".tif", ".tiff")

_ALREADY_DONE = "already done"


def _check_workers(workers: int) -> int:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    return workers


def find_sources(
    src: str | os.PathLike, *, channels: Sequence[str]
) -> tuple[dict[str, dict[str, Path]], dict[str, str]]:
    """Source files of each id in ``src``: ``({id: {color: path}}, {id: problem})``.

    Files are ``{id}_{color}{ext}`` with ``ext`` in :data:`SOURCE_EXTENSIONS` (any case);
    hidden files (temporary files) and other names are ignored. An id with a missing channel,
    or with two files for one channel (``a_red.png`` and ``a_red.tif``), is a problem, not a
    source.
    """
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"source folder not found: {src}")
    colors = "|".join(re.escape(c) for c in channels)
    exts = "|".join(re.escape(e[1:]) for e in SOURCE_EXTENSIONS)
    pattern = re.compile(rf"^(?P<id>.+)_(?P<color>{colors})\.(?:{exts})$", re.IGNORECASE)
    found: dict[str, dict[str, list[Path]]] = {}
    for path in src.iterdir():
        if path.name.startswith("."):
            continue
        match = pattern.match(path.name)
        if match is None or not path.is_file():
            continue
        color = match["color"]
        if color not in channels:  # the colour part matched case-insensitively
            continue
        found.setdefault(match["id"], {}).setdefault(color, []).append(path)
    sources: dict[str, dict[str, Path]] = {}
    problems: dict[str, str] = {}
    for image_id in sorted(found):
        files = found[image_id]
        missing = [c for c in channels if c not in files]
        doubles = {c: paths for c, paths in files.items() if len(paths) > 1}
        if missing:
            problems[image_id] = (
                f"missing channel(s) {', '.join(missing)}: no {src}/{image_id}_{missing[0]}"
                f"{{{','.join(SOURCE_EXTENSIONS)}}}"
            )
        elif doubles:
            color, paths = next(iter(doubles.items()))
            names = ", ".join(sorted(p.name for p in paths))
            problems[image_id] = f"several source files for channel {color}: {names}"
        else:
            sources[image_id] = {c: files[c][0] for c in channels}
    return sources, problems


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)  # one process per core; no nested thread pools


def _prepare_one(
    image_id: str, sources: dict[str, str], dst: str, size: tuple[int, int]
) -> tuple[str, str | None]:
    """Convert the missing channels of one id; returns ``(id, None)`` or ``(id, cause)``."""
    import cv2

    from hpa_kit.io import ImageError, channel_path, read_channel, resize_area, write_channels

    try:
        for color, source in sources.items():
            if channel_path(dst, image_id, color).exists():
                continue
            plane = resize_area(read_channel(source), size)
            write_channels(dst, image_id, plane[:, :, None], channels=(color,))
    except (ImageError, OSError, cv2.error) as exc:
        return image_id, f"{type(exc).__name__}: {exc}"
    return image_id, None


def prepare_images(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    size: int | Sequence[int] = 1024,
    workers: int = 1,
    channels: Sequence[str] | None = None,
    progress: bool = True,
) -> BatchReport:
    """Write ``dst/{id}_{color}.png`` at ``size`` for every id in ``src``; resumable.

    ``workers > 1`` converts ids in that many processes. ``channels`` defaults to
    :data:`hpa_kit.io.CHANNELS`. Returns a :class:`~hpa_kit.batch.BatchReport`: done (converted
    now), skipped (``"already done"``: every output existed) and failed (id -> cause).

    Raises ``FileNotFoundError`` when ``src`` is not a folder and ``ValueError`` for a bad
    ``size`` or ``workers`` or when ``dst`` is ``src``.
    """
    from hpa_kit.io import CHANNELS, channel_path
    from hpa_kit.progress import progress_bar

    pair = size_pair(size)
    workers = _check_workers(workers)
    channels = tuple(CHANNELS if channels is None else channels)
    src, dst = Path(src), Path(dst)
    if dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise ValueError(f"destination must differ from the source folder: {dst}")
    sources, problems = find_sources(src, channels=channels)
    dst.mkdir(parents=True, exist_ok=True)

    report = BatchReport()
    for image_id, cause in problems.items():
        report.add_failure(image_id, cause)
    todo: dict[str, dict[str, str]] = {}
    for image_id, files in sources.items():
        missing = {
            c: str(p) for c, p in files.items() if not channel_path(dst, image_id, c).exists()
        }
        if missing:
            todo[image_id] = missing
        else:
            report.add_skipped(image_id, _ALREADY_DONE)

    bar = progress_bar(total=len(todo), enabled=progress, desc="prepare", unit="image")
    try:
        if workers == 1 or len(todo) <= 1:
            for image_id, files in todo.items():
                _record(report, _prepare_one(image_id, files, str(dst), pair))
                bar.update()
        else:
            # "spawn": fresh interpreters. A forked child inherits the parent's thread state
            # (OpenCV's pool, executor threads) and was seen to hang on a futex here.
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(
                max_workers=workers, mp_context=context, initializer=_init_worker
            ) as pool:
                futures = {
                    pool.submit(_prepare_one, image_id, files, str(dst), pair): image_id
                    for image_id, files in todo.items()
                }
                _collect(pool, futures, report, bar)
    finally:
        bar.close()
    return report


def _record(report: BatchReport, result: tuple[str, str | None]) -> None:
    image_id, cause = result
    if cause is None:
        report.add_done(image_id)
    else:
        report.add_failure(image_id, cause)


def _collect(pool: Executor, futures: dict[Future, str], report: BatchReport, bar) -> None:
    try:
        for future in as_completed(futures):
            try:
                result = future.result()
            except BrokenProcessPool as exc:  # a worker died (killed, out of memory)
                result = (futures[future], f"worker process died: {exc}")
            _record(report, result)
            bar.update()
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)  # Ctrl-C: stop queued ids, finish running
        raise

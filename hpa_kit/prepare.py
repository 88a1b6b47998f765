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

Parallelism: ``workers > 1`` converts ids in that many *spawned* processes
(:func:`hpa_kit.runner.run_jobs`: one thread each, they end with their parent);
``workers == 1`` works in the calling process.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Sequence
from pathlib import Path

from hpa_kit.batch import BatchReport
from hpa_kit.errors import UsageError
from hpa_kit.io import size_pair

__all__ = ["MAX_SIDE", "SOURCE_EXTENSIONS", "find_sources", "prepare_images"]

SOURCE_EXTENSIONS: tuple[str, ...] = (".png", ".tif", ".tiff")
MAX_SIDE = 16384  # the largest HPA images are 3072 px; a larger output side is a typo

_ALREADY_DONE = "already done"


def find_sources(
    src: str | os.PathLike,
    *,
    channels: Sequence[str],
    extensions: Sequence[str] = SOURCE_EXTENSIONS,
) -> tuple[dict[str, dict[str, Path]], dict[str, str]]:
    """Source files of each id in ``src``: ``({id: {color: path}}, {id: problem})``.

    Files are ``{id}_{color}{ext}`` with ``ext`` in ``extensions`` (any case); an id is found
    from any of its channel files. Hidden files (temporary files) and other names are ignored.
    An id with a missing channel (named in its problem), or with two files for one channel
    (``a_red.png`` and ``a_red.tif``), is a problem, not a source. Raises
    :class:`hpa_kit.errors.UsageError` when ``src`` is not a folder.
    """
    src = Path(src)
    if not src.is_dir():
        raise UsageError(f"source folder not found: {src}")
    colors = "|".join(re.escape(c) for c in channels)
    exts = "|".join(re.escape(e.lstrip(".")) for e in extensions)
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
            names = ",".join(extensions)
            problems[image_id] = (
                f"missing channel(s) {', '.join(missing)}: no {src}/{image_id}_{missing[0]}"
                + (names if len(extensions) == 1 else f"{{{names}}}")
            )
        elif doubles:
            color, paths = next(iter(doubles.items()))
            names = ", ".join(sorted(p.name for p in paths))
            problems[image_id] = f"several source files for channel {color}: {names}"
        else:
            sources[image_id] = {c: files[c][0] for c in channels}
    return sources, problems


def _prepare_one(dst: str, size: tuple[int, int], image_id: str, sources: dict[str, str]) -> None:
    """Convert the missing channels of one id (an error is recorded by the runner)."""
    from hpa_kit.io import channel_path, read_channel, resize_area, write_channels

    for color, source in sources.items():
        if channel_path(dst, image_id, color).exists():
            continue
        plane = resize_area(read_channel(source), size)
        write_channels(dst, image_id, plane[:, :, None], channels=(color,))


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

    Raises :class:`hpa_kit.errors.UsageError` (a ``ValueError``), before any work, when ``src``
    is not a folder, for a bad ``size`` or ``workers``, when ``dst`` is ``src`` or cannot be
    written.
    """
    from hpa_kit.io import CHANNELS, channel_path
    from hpa_kit.outputs import check_writable_folder
    from hpa_kit.runner import MAX_WORKERS, RunnerOptions, Stage, check_number, run_jobs

    try:
        pair = size_pair(size)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    for side in pair:
        check_number("size", side, low=1, high=MAX_SIDE, integer=True)
    check_number("workers", workers, low=1, high=MAX_WORKERS, integer=True)
    channels = tuple(CHANNELS if channels is None else channels)
    src, dst = Path(src), Path(dst)
    if dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise UsageError(f"destination must differ from the source folder: {dst}")
    sources, problems = find_sources(src, channels=channels)
    dst.mkdir(parents=True, exist_ok=True)
    check_writable_folder(dst, what="the destination")

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
    options = RunnerOptions(
        workers=0 if workers == 1 or len(todo) <= 1 else workers,
        ordered=False,
        progress=progress,
        desc="prepare",
        unit="image",
    )
    job = [Stage(functools.partial(_prepare_one, str(dst), pair))]
    for result in run_jobs(todo, job, options):
        report.add_result(result.id, result.error)
    return report

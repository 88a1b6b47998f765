"""A record of a batch job: which ids were done, skipped (and why) or failed (and why).

Batch jobs in hpa_kit (``prepare``, ``download-public``, ...) never stop at the first bad item
and never drop one silently: each id ends up in exactly one of the three groups, and the job
prints :meth:`BatchReport.summary` at the end.

>>> report = BatchReport()
>>> report.add_done("a")
>>> report.add_skipped("b", "already done")
>>> report.add_failure("c", "HTTP 404")
>>> report.ok, report.total
(False, 3)
>>> print(report.summary())
1 done, 1 skipped (already done: 1), 1 failed
failed:
  c: HTTP 404
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from hpa_kit.outputs import atomic_write_text

__all__ = ["BatchReport", "allowed_failures"]


def allowed_failures(limit: float, total: int) -> int:
    """How many of ``total`` ids may fail under ``limit``: below 1, a fraction of ``total``
    (rounded down); from 1, a count of ids (a whole number). Raises
    :class:`hpa_kit.errors.UsageError` for anything else (negative, not finite, 2.5).

    >>> allowed_failures(0.05, 100), allowed_failures(0.05, 10), allowed_failures(3, 10)
    (5, 0, 3)
    >>> allowed_failures(0, 7), allowed_failures(1.0, 7), allowed_failures(0.999, 7)
    (0, 1, 6)
    """
    from hpa_kit.errors import UsageError

    bad = isinstance(limit, bool) or not isinstance(limit, (int, float))
    if bad or not math.isfinite(limit) or limit < 0 or (limit >= 1 and limit != int(limit)):
        raise UsageError(
            f"max_failures must be a fraction in [0, 1) or a whole count >= 1, got {limit!r}"
        )
    if limit >= 1:
        return int(limit)
    return math.floor(limit * total)


@dataclass
class BatchReport:
    """Outcome of a batch job, one entry per id.

    ``done``: ids processed by this run, in completion order. ``skipped``: id -> reason (for
    example ``"already done"`` on a resumed run). ``failed``: id -> cause (an error message that
    names the file or URL). An id recorded twice raises ``ValueError``: that is a bug in the job.
    """

    done: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    _seen: set[str] = field(default_factory=set, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._seen = set(self.done) | set(self.skipped) | set(self.failed)
        if len(self._seen) != self.total:
            raise ValueError("an id appears in more than one group of the batch report")

    def _check_new(self, image_id: str) -> None:
        if image_id in self._seen:
            raise ValueError(f"id {image_id!r} recorded twice in the batch report")
        self._seen.add(image_id)

    def add_done(self, image_id: str) -> None:
        self._check_new(image_id)
        self.done.append(image_id)

    def add_skipped(self, image_id: str, reason: str) -> None:
        self._check_new(image_id)
        self.skipped[image_id] = reason

    def add_failure(self, image_id: str, cause: str) -> None:
        self._check_new(image_id)
        self.failed[image_id] = cause

    def add_result(self, image_id: str, error: str | None) -> None:
        """Done when ``error`` is ``None``, else failed with that cause (a job runner's
        :class:`hpa_kit.runner.JobResult` gives both)."""
        if error is None:
            self.add_done(image_id)
        else:
            self.add_failure(image_id, error)

    @property
    def ok(self) -> bool:
        """True when nothing failed."""
        return not self.failed

    @property
    def total(self) -> int:
        return len(self.done) + len(self.skipped) + len(self.failed)

    @property
    def exit_code(self) -> int:
        """0 when nothing failed, else 1 (for command-line shells)."""
        return 0 if self.ok else 1

    def summary(self, *, max_failures: int = 50) -> str:
        """Counts, then the failures (id: cause), at most ``max_failures`` of them."""
        skipped = f"{len(self.skipped)} skipped"
        if self.skipped:
            reasons = Counter(self.skipped.values())
            skipped += " (" + ", ".join(f"{r}: {n}" for r, n in sorted(reasons.items())) + ")"
        lines = [f"{len(self.done)} done, {skipped}, {len(self.failed)} failed"]
        if self.failed:
            lines.append("failed:")
            items = sorted(self.failed.items())
            lines.extend(f"  {image_id}: {cause}" for image_id, cause in items[:max_failures])
            if len(items) > max_failures:
                lines.append(f"  ... and {len(items) - max_failures} more")
        return "\n".join(lines)

    def write_failures(self, path: str | Path) -> Path:
        """Write the failures as a CSV with columns ``ID,cause`` (header only when none),
        atomically (:func:`hpa_kit.outputs.atomic_write_text`; the folder is created)."""
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(["ID", "cause"])
        writer.writerows(sorted(self.failed.items()))
        return atomic_write_text(path, text.getvalue())

    def to_dict(self) -> dict[str, object]:
        return {"done": list(self.done), "skipped": dict(self.skipped), "failed": dict(self.failed)}

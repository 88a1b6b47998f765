"""Time ``prepare_images`` (the image cache) on the real sample images.

Converts every id in ``--src`` (the four real samples: three 2048 px, one 3072 px, 16 PNGs,
~110 MB of pixels) to ``--size`` px PNGs with each worker count of ``--workers``, each call
into a fresh temporary folder. The worker counts run in interleaved rounds
(``benchmarks/_timing.py``: the order rotates every round, so load on a shared machine falls
on all alike), ``--rounds`` of them (``--copies K`` links each id K times, for more ids).
Printed per worker count: the median wall-clock seconds over the rounds, then the fastest and
slowest round, images per second at the median, and the speed-up over the first worker count
(the median of the per-round ratios, then the lowest and highest). A last run over a finished
folder times the resume check (all skipped).

    .venv/bin/python benchmarks/bench_prepare.py --src ../shared/data/hpa-samples/images
    .venv/bin/python benchmarks/bench_prepare.py --src ../shared/data/hpa-samples/images \\
        --copies 4 --rounds 5

Figures are wall-clock seconds on whatever machine runs it; other work on the machine shows.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _timing import interleaved, ratio

from hpa_kit.prepare import prepare_images


def _converter(src: Path, root: Path, size: int, workers: int) -> Callable[[], int]:
    """A call that converts ``src`` into a new folder under ``root``; returns the ids done."""
    fresh = itertools.count()

    def run() -> int:
        dst = root / f"w{workers}_{next(fresh)}"
        report = prepare_images(src, dst, size=size, workers=workers, progress=False)
        if not report.ok:
            raise SystemExit(report.summary())
        return len(report.done)

    return run


def _link_copies(src: Path, dst: Path, copies: int) -> Path:
    dst.mkdir()
    for path in src.iterdir():
        image_id, _, color = path.name.rpartition("_")
        for copy in range(copies):
            (dst / f"{image_id}-{copy}_{color}").symlink_to(path.resolve())
    return dst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, required=True)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument(
        "--copies", type=int, default=1, help="link each source id this many times (more ids)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        src = _link_copies(args.src, root / "src", args.copies) if args.copies > 1 else args.src
        fns = {str(w): _converter(src, root, args.size, w) for w in args.workers}
        times = interleaved(fns, args.rounds)
        first = next(iter(times.values()))
        print(f"| workers | images | wall s | images/s (median) | speed-up vs {args.workers[0]} |")
        print("|---|---|---|---|---|")
        for name, t in times.items():
            done = t.result
            print(f"| {name} | {done} | {t.text(fmt='{:.2f}', unit='')} | "
                  f"{done / t.median:.2f} | {ratio(first, t).text(fmt='{:.2f}', unit='x')} |")  # fmt: skip
        finished = root / f"w{args.workers[0]}_0"  # the first timed call's output
        start = time.perf_counter()
        report = prepare_images(src, finished, size=args.size, workers=1, progress=False)
        elapsed = time.perf_counter() - start
        print(f"\nresume over the finished folder ({len(report.skipped)} skipped): "
              f"{elapsed * 1000:.1f} ms")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

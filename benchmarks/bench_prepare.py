"""Time ``prepare_images`` (the image cache) on the real sample images.

Converts every id in ``--src`` (the four real samples: three 2048 px, one 3072 px, 16 PNGs,
~110 MB of pixels) to ``--size`` px PNGs with 1 and then 2 worker processes, each into a fresh
temporary folder, ``--repeat`` times (``--copies K`` links each id K times, for more ids), and prints the best and median wall-clock seconds and
images per second. A last run over a finished folder times the resume check (all skipped).

    .venv/bin/python benchmarks/bench_prepare.py --src ../shared/data/hpa-samples/images
    .venv/bin/python benchmarks/bench_prepare.py --src ../shared/data/hpa-samples/images --copies 4

Figures are wall-clock seconds on whatever machine runs it; other work on the machine shows.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from hpa_kit.prepare import prepare_images


def _time(src: Path, dst: Path, size: int, workers: int) -> tuple[float, int]:
    start = time.perf_counter()
    report = prepare_images(src, dst, size=size, workers=workers, progress=False)
    elapsed = time.perf_counter() - start
    if not report.ok:
        raise SystemExit(report.summary())
    return elapsed, len(report.done)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, required=True)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--copies", type=int, default=1, help="link each source id this many times (more ids)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.copies > 1:
            linked = Path(tmp) / "src"
            linked.mkdir()
            for path in args.src.iterdir():
                image_id, _, color = path.name.rpartition("_")
                for copy in range(args.copies):
                    (linked / f"{image_id}-{copy}_{color}").symlink_to(path.resolve())
            args.src = linked
        for workers in args.workers:
            times = []
            for index in range(args.repeat):
                elapsed, done = _time(
                    args.src, Path(tmp) / f"w{workers}_{index}", args.size, workers
                )
                times.append(elapsed)
            best, median = min(times), statistics.median(times)
            print(
                f"size {args.size} workers {workers}: {done} images, best {best:.2f} s "
                f"({done / best:.2f} images/s), median {median:.2f} s over {args.repeat} runs"
            )
        elapsed, _ = _time(args.src, Path(tmp) / "w1_0", args.size, 1)
        print(f"resume over the finished folder (all skipped): {elapsed * 1000:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

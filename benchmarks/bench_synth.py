"""Time synthetic image generation (hpa_kit.synth) at the competition's sizes.

Usage (from the repository root):

    .venv/bin/python benchmarks/bench_synth.py --sizes 1728 2048 3072 --repeat 3 --write 2

For each size it times ``generate_image`` over ``--repeat`` seeds (min / median wall seconds,
median process CPU seconds, cell counts), then, with ``--write N``, ``write_dataset`` of N
images at 2048 px (generation + 4 channel PNGs + 2 label PNGs + truth RLE + CSVs) per image.
Single process; OpenCV may use its own threads inside cv2 calls.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1728, 2048, 3072])
    parser.add_argument("--repeat", type=int, default=3, help="seeds per size")
    parser.add_argument("--write", type=int, default=2, help="images for write_dataset (0: skip)")
    args = parser.parse_args()

    import cv2
    import numpy as np

    from hpa_kit.synth import generate_image, write_dataset

    generate_image(size=128, seed=0)  # warm imports and OpenCV
    results: dict[str, object] = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "cv2_threads": cv2.getNumThreads(),
        "generate": {},
    }
    for size in args.sizes:
        times, cpu, cells = [], [], []
        for seed in range(args.repeat):
            start, start_cpu = time.perf_counter(), time.process_time()
            synth = generate_image(size=size, seed=seed)
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
            cells.append(synth.num_cells)
        results["generate"][str(size)] = {
            "min_s": round(min(times), 3),
            "median_s": round(statistics.median(times), 3),
            "median_cpu_s": round(statistics.median(cpu), 3),
            "cells": cells,
        }
        print(
            f"generate_image {size}x{size}: min {min(times):.3f} s, median "
            f"{statistics.median(times):.3f} s (process CPU median {statistics.median(cpu):.3f} s) "
            f"over {args.repeat} seeds; cells {cells}",
            flush=True,
        )
    if args.write > 0:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            data = write_dataset(tmp, n=args.write, size=2048, seed=0)
            per_image = (time.perf_counter() - start) / args.write
        results["write_dataset_2048_s_per_image"] = round(per_image, 3)
        print(
            f"write_dataset 2048 px: {per_image:.3f} s per image over {args.write} images "
            f"({data.num_cells} cells)"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()

"""Benchmark: one-pass ``encode_label_image`` against per-cell full-image encoding.

For each real sample mask (HPA-Cell-Segmentation label images, 2048 and 3072 px) it times

- ``encode_label_image(labels)`` (all cells in one pass), and
- the per-cell baseline ``{i: encode_binary_mask(labels == i) for i in ids}`` (a full-image
  mask and a full-image pycocotools encode per cell; ``ids`` computed beforehand, not timed),

asserts that both give byte-identical texts, and prints the best-of-N times and their ratio
(measured in the same run, so machine load affects both sides alike). Exits 1 when the
outputs differ or the overall ratio is below ``--min-ratio``.

    HPA_KIT_SAMPLES=../shared/data/hpa-samples .venv/bin/python benchmarks/bench_rle.py
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from hpa_kit.io import read_label_image
from hpa_kit.rle import encode_binary_mask, encode_label_image


def _best_time(function: Callable[[], object], repeat: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def _default_samples() -> Path:
    value = os.environ.get("HPA_KIT_SAMPLES")
    if value:
        return Path(value)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hpa-samples"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=Path, default=_default_samples(), help="sample folder")
    parser.add_argument("--repeat", type=int, default=5, help="runs of the one-pass encoder")
    parser.add_argument("--repeat-baseline", type=int, default=2, help="runs of the baseline")
    parser.add_argument("--min-ratio", type=float, default=10.0, help="target speed ratio")
    args = parser.parse_args(argv)

    paths = sorted((args.samples / "masks").glob("*_predictedmask.png"))
    if not paths:
        print(f"no masks found in {args.samples / 'masks'}", file=sys.stderr)
        return 1
    header = f"{'image':<10} {'size':>9} {'cells':>5} {'one-pass ms':>11} {'per-cell ms':>11} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    total_fast = total_slow = 0.0
    identical = True
    for path in paths:
        labels = read_label_image(path)
        ids = [int(i) for i in np.unique(labels) if i != 0]
        fast, encoded = _best_time(lambda labels=labels: encode_label_image(labels), args.repeat)
        slow, reference = _best_time(
            lambda labels=labels, ids=ids: {i: encode_binary_mask(labels == i) for i in ids},
            args.repeat_baseline,
        )
        same = encoded == reference
        identical &= same
        total_fast += fast
        total_slow += slow
        size = f"{labels.shape[0]}x{labels.shape[1]}"
        print(
            f"{path.name[:8]:<10} {size:>9} {len(ids):>5} {fast * 1e3:>11.1f} {slow * 1e3:>11.1f} "
            f"{slow / fast:>5.1f}x" + ("" if same else "  OUTPUTS DIFFER")
        )
    ratio = total_slow / total_fast
    print(
        f"{'all':<10} {'':>9} {'':>5} {total_fast * 1e3:>11.1f} {total_slow * 1e3:>11.1f} "
        f"{ratio:>5.1f}x"
    )
    print(f"byte-identical: {identical}; target >= {args.min_ratio:g}x: {ratio >= args.min_ratio}")
    return 0 if identical and ratio >= args.min_ratio else 1


if __name__ == "__main__":
    sys.exit(main())

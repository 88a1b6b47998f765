"""Benchmark: one-pass ``encode_label_image`` against per-cell full-image encoding.

For each real sample mask (HPA-Cell-Segmentation label images, 2048 and 3072 px) it times

- ``encode_label_image(labels)`` (all cells in one pass), and
- the per-cell baseline ``{i: encode_binary_mask(labels == i) for i in ids}`` (a full-image
  mask and a full-image pycocotools encode per cell; ``ids`` computed beforehand, not timed),

asserts that both give byte-identical texts, and prints their times and ratio. The two run in
interleaved rounds (``benchmarks/_timing.py``: the order alternates every round, so machine
load falls on both alike); the one-pass encoder runs ``--number`` times per timed value (the
mean taken). Times are the median over the rounds, then the fastest and slowest round; a
ratio is the median of the per-round ratios, then the lowest and highest. The "all" row sums
each round's times over the images. Exits 1 when the outputs differ or the median overall
ratio is below ``--min-ratio``.

    HPA_KIT_SAMPLES=../shared/data/hpa-samples .venv/bin/python benchmarks/bench_rle.py \
        --rounds 7 --number 5
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from _timing import Spread, interleaved, ratio

from hpa_kit.io import read_label_image
from hpa_kit.rle import encode_binary_mask, encode_label_image


def _default_samples() -> Path:
    value = os.environ.get("HPA_KIT_SAMPLES")
    if value:
        return Path(value)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hpa-samples"


def _row(name: str, size: str, cells: str, fast: Spread, slow: Spread, note: str = "") -> str:
    ms = {"fmt": "{:.1f}", "unit": "", "scale": 1000}
    return (f"| {name} | {size} | {cells} | {fast.text(**ms)} | {slow.text(**ms)} | "
            f"{ratio(slow, fast).text(fmt='{:.1f}', unit='x')} |{note}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=Path, default=_default_samples(), help="sample folder")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds")
    parser.add_argument("--number", type=int, default=5, help="one-pass calls per timed value")
    parser.add_argument("--min-ratio", type=float, default=10.0, help="target speed ratio")
    args = parser.parse_args(argv)

    paths = sorted((args.samples / "masks").glob("*_predictedmask.png"))
    if not paths:
        print(f"no masks found in {args.samples / 'masks'}", file=sys.stderr)
        return 1
    print("| image | size | cells | one-pass ms | per-cell ms | ratio |")
    print("|---|---|---|---|---|---|")
    sums = {"fast": np.zeros(args.rounds), "slow": np.zeros(args.rounds)}
    identical, total_cells = True, 0
    for path in paths:
        labels = read_label_image(path)
        ids = [int(i) for i in np.unique(labels) if i != 0]
        times = interleaved(
            {
                "fast": lambda labels=labels: encode_label_image(labels),
                "slow": lambda labels=labels, ids=ids: {
                    i: encode_binary_mask(labels == i) for i in ids
                },
            },
            args.rounds,
            number={"fast": args.number},
        )
        same = times["fast"].result == times["slow"].result
        identical &= same
        total_cells += len(ids)
        for name in sums:
            sums[name] += times[name].values
        size = f"{labels.shape[0]}x{labels.shape[1]}"
        note = "" if same else "  OUTPUTS DIFFER"
        print(_row(path.name[:8], size, str(len(ids)), times["fast"], times["slow"], note))
    fast, slow = Spread(tuple(sums["fast"])), Spread(tuple(sums["slow"]))
    print(_row("all", "", str(total_cells), fast, slow))
    overall = ratio(slow, fast).median
    print(f"\nbyte-identical: {identical}; target >= {args.min_ratio:g}x (median): "
          f"{overall >= args.min_ratio}")  # fmt: skip
    return 0 if identical and overall >= args.min_ratio else 1


if __name__ == "__main__":
    sys.exit(main())

"""Throughput of the training input pipeline: read PNGs + the seed's train augmentation.

Source: the real sample images (HPA_KIT_SAMPLES or --samples), the 4 ids repeated to --n
items, read either as stored (2048/3072 px, "raw") or from a copy resized to 1024 px with area
interpolation (what ``hpa-kit prepare --size 1024`` and the seed used, "prepared"). For each
input size and DataLoader worker count it times one full pass of a DataLoader
(batch 8, SeededSampler, HPADataset.for_config(train=True)), dataset construction and
worker start-up included. For each input size and worker count the sources run in interleaved
rounds (``benchmarks/_timing.py``: the order alternates every round, so load on a shared
machine falls on both alike), ``--rounds`` of them, after ``--warmup`` untimed passes of each
(the first pass pays imports). Printed as a Markdown table: images/s at
the median pass time, the pass seconds (median, then the fastest and slowest round), and per
row the speed-up of the first source over the others (median of the per-round ratios, then
the lowest and highest).

    NO_ALBUMENTATIONS_UPDATE=1 .venv/bin/python benchmarks/bench_dataset.py \\
        --samples ../shared/data/hpa-samples --n 24 --sizes 512 1024 --workers 0 1 2 --rounds 3
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import tempfile
from pathlib import Path

from _timing import interleaved, ratio

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def _prepare(samples: Path, ids: list[str], out: Path, size: int, channels) -> Path:
    from hpa_kit.io import read_image, write_channels

    for image_id in ids:
        image = read_image(samples / "images", image_id, channels=channels, size=size)
        write_channels(out, image_id, image, channels=channels)
    return out


def _pass(df, images_dir, *, size, workers, channels, batch_size=8) -> int:
    """One full pass of a training DataLoader; returns the number of images."""
    import torch

    from hpa_kit.dataset import HPADataset, SeededSampler
    from hpa_kit.model import ClassifierConfig

    config = ClassifierConfig(arch="none", channels=channels, input_size=size)
    dataset = HPADataset.for_config(df, images_dir, config, train=True)
    sampler = SeededSampler(len(dataset), seed=0)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers
    )
    count = sum(len(images) for images, _ in loader)
    assert count == len(dataset)
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", default=os.environ.get("HPA_KIT_SAMPLES"), required=False)
    parser.add_argument("--n", type=int, default=24, help="items per pass (ids repeated)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--channels", type=int, default=3, choices=(3, 4))
    parser.add_argument("--sources", nargs="+", default=["prepared", "raw"],
                        choices=("prepared", "raw"))  # fmt: skip
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--warmup", type=int, default=1, help="untimed passes of each source")
    args = parser.parse_args()
    if not args.samples:
        parser.error("--samples (or HPA_KIT_SAMPLES) is required")

    import pandas as pd
    import torch

    from hpa_kit.augment import channel_names

    torch.set_num_threads(1)
    samples = Path(args.samples)
    channels = channel_names(args.channels)
    table = pd.read_csv(samples / "train.csv")
    ids = sorted(p.name[: -len("_red.png")] for p in (samples / "images").glob("*_red.png"))
    base = table[table["ID"].isin(ids)].reset_index(drop=True)
    df = pd.concat([base] * (args.n // len(base) + 1), ignore_index=True).iloc[: args.n]

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch threads 1, channels {channels}, {args.n} items per pass, batch 8, "
        f"{args.rounds} rounds"
    )
    print()
    print(f"| source | input px | workers | images/s | pass s | {args.sources[0]} speed-up |")
    print("|---|---:|---:|---:|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        folders = {
            source: _prepare(samples, ids, Path(tmp) / "p1024", 1024, channels)
            if source == "prepared"
            else samples / "images"
            for source in args.sources
        }
        for size in args.sizes:
            for workers in args.workers:
                fns = {
                    source: functools.partial(
                        _pass, df, folder, size=size, workers=workers, channels=channels
                    )
                    for source, folder in folders.items()
                }
                times = interleaved(fns, args.rounds, warmup=args.warmup)
                first = times[args.sources[0]]
                for source, t in times.items():
                    speedup = ratio(t, first).text(fmt="{:.2f}", unit="x")
                    print(f"| {source} | {size} | {workers} | {t.result / t.median:.1f} | "
                          f"{t.text(fmt='{:.2f}', unit='')} | {speedup} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()

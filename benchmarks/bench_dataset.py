"""Throughput of the training input pipeline: read PNGs + the seed's train augmentation.

Source: the real sample images (HPA_KIT_SAMPLES or --samples), the 4 ids repeated to --n
items, read either as stored (2048/3072 px, "raw") or from a copy resized to 1024 px with area
interpolation (what ``hpa-kit prepare --size 1024`` and the seed used, "prepared"). For each
input size and DataLoader worker count it times one full pass of a DataLoader
(batch 8, SeededSampler, HPADataset.for_config(train=True)), worker start-up included, and
prints a Markdown table of images/s.

    NO_ALBUMENTATIONS_UPDATE=1 .venv/bin/python benchmarks/bench_dataset.py \\
        --samples ../shared/data/hpa-samples --n 24 --sizes 512 1024 --workers 0 1 2
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def _prepare(samples: Path, ids: list[str], out: Path, size: int, channels) -> Path:
    from hpa_kit.io import read_image, write_channels

    for image_id in ids:
        image = read_image(samples / "images", image_id, channels=channels, size=size)
        write_channels(out, image_id, image, channels=channels)
    return out


def _time_pass(df, images_dir, *, size, workers, channels, batch_size=8) -> float:
    import torch

    from hpa_kit.dataset import HPADataset, SeededSampler
    from hpa_kit.model import ClassifierConfig

    config = ClassifierConfig(arch="none", channels=channels, input_size=size)
    dataset = HPADataset.for_config(df, images_dir, config, train=True)
    sampler = SeededSampler(len(dataset), seed=0)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers
    )
    start = time.perf_counter()
    count = 0
    for images, _ in loader:
        count += len(images)
    elapsed = time.perf_counter() - start
    assert count == len(dataset)
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", default=os.environ.get("HPA_KIT_SAMPLES"), required=False)
    parser.add_argument("--n", type=int, default=24, help="items per pass (ids repeated)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--channels", type=int, default=3, choices=(3, 4))
    parser.add_argument("--sources", nargs="+", default=["prepared", "raw"])
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
        f"torch threads 1, channels {channels}, {args.n} items per pass, batch 8"
    )
    print()
    print("| source | input px | workers | images/s |")
    print("|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for source in args.sources:
            if source == "prepared":
                folder = _prepare(samples, ids, Path(tmp) / "p1024", 1024, channels)
            else:
                folder = samples / "images"
            for size in args.sizes:
                for workers in args.workers:
                    rate = _time_pass(df, folder, size=size, workers=workers, channels=channels)
                    print(f"| {source} | {size} | {workers} | {rate:.1f} |", flush=True)


if __name__ == "__main__":
    main()

"""The classify stage of ``predict_folder`` with and without its thread setting (issue 15).

``predict_folder`` classifies in the calling process while its worker processes segment the next
images. Before, it left torch's thread count alone (torch's default: one thread per core), so
on a small machine the classifier's threads and the workers fought over the cores. Now it uses
``PredictOptions.threads`` (default: cores minus workers, at least 1) and each worker one
thread. This script runs ``predict_folder`` on synthetic images with ``--workers`` worker
processes, alternating the two settings in every repeat (ABAB, then BABA: the machine's load
drifts, so the two are measured side by side), and reports the classify stage per image
(``PredictReport.timings["classify"]``) and the wall time: medians with [min, max] over the
repeats, and the before/after ratio of the medians.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_threads.py --images 6 --size 512 \\
        --workers 2 --repeat 5 --arch efficientnet_b0 --crop 128
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} [{min(values):.1f}, {max(values):.1f}]"


def _checkpoint(folder: Path, arch: str, crop: int) -> Path:
    import torch

    from hpa_kit.model import ClassifierConfig, build_classifier, save_checkpoint

    torch.manual_seed(0)
    config = ClassifierConfig(arch=arch, channels=("red", "green", "blue"), input_size=crop)
    model = build_classifier(config.arch, config.in_chans, config.num_classes).eval()
    return save_checkpoint(folder / arch, model, config)


def _run_once(data, checkpoint: Path, out: Path, *, workers: int, threads: int | None, size: int):
    from hpa_kit.predict import PredictOptions, predict_folder
    from hpa_kit.segment import ClassicalSegmenter

    options = PredictOptions(
        tta="none", num_workers=workers, threads=threads, progress=False, max_failures=1.0
    )
    segmenter = ClassicalSegmenter(scale=0.5, pixel_size=2048 / size)
    t0 = time.perf_counter()
    report = predict_folder(
        data.out / "images",
        data.sample_submission,
        [checkpoint],
        out=out,
        segmenter=segmenter,
        options=options,
    )
    wall = time.perf_counter() - t0
    return 1000 * report.timings["classify"] / report.processed, wall, report.cells


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--size", type=int, default=512, help="synthetic image side")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--arch", default="efficientnet_b0")
    parser.add_argument("--crop", type=int, default=128, help="classifier input size")
    args = parser.parse_args(argv)

    import torch

    from hpa_kit.predict import PredictOptions
    from hpa_kit.runner import cpu_cores
    from hpa_kit.synth import write_dataset

    default_threads = torch.get_num_threads()  # what predict_folder used to leave in place
    auto = PredictOptions(num_workers=args.workers).classify_threads()
    configs = {"before (torch default)": default_threads, "after (auto)": None}
    classify: dict[str, list[float]] = {name: [] for name in configs}
    wall: dict[str, list[float]] = {name: [] for name in configs}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = write_dataset(tmp / "data", n=args.images, size=args.size, seed=0, progress=False)
        checkpoint = _checkpoint(tmp, args.arch, args.crop)
        names = list(configs)
        for repeat in range(args.repeat):
            for name in names if repeat % 2 == 0 else names[::-1]:
                ms, seconds, cells = _run_once(
                    data, checkpoint, tmp / "s.csv", workers=args.workers,
                    threads=configs[name], size=args.size,
                )  # fmt: skip
                classify[name].append(ms)
                wall[name].append(seconds)
                print(f"repeat {repeat} {name}: classify {ms:.1f} ms/image, wall {seconds:.1f} s, "
                      f"{cells} cells", flush=True)  # fmt: skip
    print(
        f"\n{platform.processor() or platform.machine()}, {cpu_cores()} cores, torch "
        f"{torch.__version__}, {args.images} images of {args.size} px, {args.workers} workers, "
        f"{args.arch} at {args.crop} px, tta none, {args.repeat} repeats (interleaved), "
        f"load average {os.getloadavg()[0]:.1f}\n"
    )
    print("| setting | classifier threads | classify ms/image, median [min, max] | wall s |")
    print("|---|---|---|---|")
    for name, threads in configs.items():
        shown = threads if threads is not None else f"{auto} (cores - workers)"
        print(f"| {name} | {shown} | {_spread(classify[name])} | {_spread(wall[name])} |")
    before, after = (statistics.median(classify[name]) for name in names)
    print(f"\nclassify stage, before / after (medians): {before / after:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

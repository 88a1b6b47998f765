"""Per-image time of the predictor's stages on one real sample image, and a kernel projection.

Stages, each timed on the same image (median of --repeat runs after one warm-up):

- read: the four channel PNGs (:func:`hpa_kit.io.read_image`);
- seg maps (classical): :meth:`ClassicalSegmenter.maps` (the weights-free stand-in for the
  hpacellseg networks, which need a GPU and weights);
- seg maps (networks): :meth:`NetworkSegmenter.maps` with the cost-faithful random-weight
  stand-ins of hpacellseg's two DPN-92 U-Nets (:mod:`hpa_kit.segment.standin`; 512x512 inputs
  at scale 0.25), float32 on this CPU, timed --network-repeat times without a warm-up (about
  1.5 min each here; 0 skips it);
- seg labels: :meth:`ClassicalSegmenter.labels` (maps -> full-resolution labels, the CPU part
  that workers run for the network segmenter too);
- crops: :func:`hpa_kit.crop.crop_cells` at --size;
- classify: a randomly initialised timm --arch on the crops (3 channels, batches of
  --batch-size), for each TTA set in --tta;
- encode: :func:`hpa_kit.rle.encode_label_image`;
- format + resume: :func:`cells_prediction_string` (all 19 classes) and one fsynced resume
  line; csv: :func:`write_submission` of 1,776 rows each holding this image's string.

Then it projects the time of a Kaggle kernel on the 559 public and all 1,776 test images from
the measured CPU stages and ASSUMED GPU figures, and prints Markdown: classification throughput
(--gpu-crops-per-s) and the segmentation networks' time, derived from their FLOP count
(:func:`hpa_kit.segment.standin.standin_cost`, per padded input of each test image size) and
an assumed effective throughput = datasheet peak x assumed utilisation (``UTILISATION``,
scaled by --util-scale) of a T4 and a P100.

    .venv/bin/python benchmarks/bench_predict.py --samples ../shared/data/hpa-samples \\
        --size 256 --tta none seed --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

TEST_IMAGES = 1776
PUBLIC_IMAGES = 559
# Test-set size mix (REFERENCE.md section 1, public part): 462 of 559 at 2048, 68 at 1728,
# 29 at 3072; per-pixel stages scale with the area relative to 2048 x 2048.
SIZE_MIX = {2048: 462, 1728: 68, 3072: 29}
AREA_FACTOR = sum(n * (side / 2048) ** 2 for side, n in SIZE_MIX.items()) / PUBLIC_IMAGES
# Datasheet peaks (TFLOPS, dense) of Kaggle's GPUs: T4 (fp16 on tensor cores), P100 PCIe 16 GB
# (fp16 as half2 arithmetic, no tensor cores).
GPU_PEAKS = {"T4": {"fp16": 65.0, "fp32": 8.1}, "P100": {"fp16": 18.7, "fp32": 9.3}}
# ASSUMED share of those peaks that the networks' convolutions reach (nothing measured on these
# GPUs): T4 tensor cores 0.30 (a 70 W card that lowers its clocks under sustained load), fp32
# 0.60 (large 3x3 convolutions); P100 fp16 0.50, fp32 0.60.
UTILISATION = {"T4": {"fp16": 0.30, "fp32": 0.60}, "P100": {"fp16": 0.50, "fp32": 0.60}}


def _median_time(fn, repeat: int):
    fn()  # warm-up
    times = []
    result = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def _network_maps_seconds(image, repeat: int) -> tuple[float, float] | None:
    """Median wall and CPU-time seconds of ``NetworkSegmenter.maps`` for ``image`` with the
    cost-faithful stand-ins on this CPU (``repeat`` runs, no warm-up: each takes a minute or
    more); None if ``repeat`` is 0. On a shared machine the CPU time is the steadier figure."""
    if repeat < 1:
        return None
    from hpa_kit.segment import NetworkSegmenter
    from hpa_kit.segment.standin import write_standin_weights

    with tempfile.TemporaryDirectory() as tmp:
        write_standin_weights(tmp)
        segmenter = NetworkSegmenter.from_dir(tmp, "cpu", scale=0.25, batch_size=1)
    wall, cpu = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        segmenter.maps([image])
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def _seg_flops_per_image() -> float:
    """FLOPs of both networks per test image: padded inputs at scale 0.25, averaged over the
    test size mix."""
    import numpy as np

    from hpa_kit.segment.networks import network_inputs
    from hpa_kit.segment.standin import standin_cost

    total = 0.0
    for side, count in SIZE_MIX.items():
        padded = network_inputs(np.zeros((side, side, 4), np.uint8), scale=0.25)[0].shape
        total += count * 2 * standin_cost(rows=padded[1], cols=padded[2]).flops
    return total / PUBLIC_IMAGES


def _hours(seconds_per_image: float, images: int) -> str:
    return f"{seconds_per_image * images / 3600:.2f}"


def _print_gpu_segmentation(args) -> dict[str, float]:
    """Print the assumed GPU time of the segmentation networks; return fp16 s/image per GPU
    (``predict_maps`` runs float16 autocast on CUDA)."""
    flops = _seg_flops_per_image()
    print(
        f"Segmentation networks on the GPU: {flops / 1e12:.3f} TFLOP per test image (both "
        "networks, counted on the stand-ins with torch's FLOP counter: measured); the effective "
        "throughput is ASSUMED (datasheet peak x assumed utilisation), nothing here ran on a "
        "GPU.\n"
    )
    print(
        "| GPU | precision | peak TFLOPS (datasheet) | utilisation (assumed) | seg s/image | "
        f"seg hours, {PUBLIC_IMAGES} / {TEST_IMAGES} images | at half the utilisation |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    fp16 = {}
    for gpu, peaks in GPU_PEAKS.items():
        for precision, peak in peaks.items():
            utilisation = UTILISATION[gpu][precision] * args.util_scale
            seconds = flops / (peak * utilisation * 1e12)
            if precision == "fp16":
                fp16[gpu] = seconds
            print(
                f"| {gpu} | {precision} | {peak:g} | {utilisation:.2f} | {seconds:.3f} | "
                f"{_hours(seconds, PUBLIC_IMAGES)} / {_hours(seconds, TEST_IMAGES)} | "
                f"{_hours(2 * seconds, PUBLIC_IMAGES)} / {_hours(2 * seconds, TEST_IMAGES)} |"
            )
    print()
    return fp16


def _print_kernels(args, seg_s: dict[str, float], cpu_stages: float, n_cells: int, classify):
    """The kernel table: GPU (fp16 segmentation + classification, assumed) against the CPU
    workers (measured), per GPU, TTA set and number of models."""
    views = {"none": 1, "seed": 5, "d4": 8}
    cpu = cpu_stages / args.workers
    print(
        "| setting | GPU s/image (assumed) | CPU s/image / workers (measured) | bound | "
        f"hours, {PUBLIC_IMAGES} images | hours, {TEST_IMAGES} images |"
    )
    print("|---|---:|---:|---|---:|---:|")
    for gpu, seg in seg_s.items():
        for tta in args.tta:
            for n_models in (1, 2):
                on_gpu = seg + n_cells * views.get(tta, 1) * n_models / args.gpu_crops_per_s
                wall = max(on_gpu, cpu)
                print(
                    f"| {gpu} kernel, {n_models} model(s), tta {tta} | {on_gpu:.2f} | {cpu:.2f} | "
                    f"{'CPU' if cpu >= on_gpu else 'GPU'} | {_hours(wall, PUBLIC_IMAGES)} | "
                    f"{_hours(wall, TEST_IMAGES)} |"
                )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--samples", default=os.environ.get("HPA_KIT_SAMPLES", "../shared/data/hpa-samples")
    )
    parser.add_argument("--image-id", default="000a6c98-bb9b-11e8-b2b9-ac1f6b6435d0")
    parser.add_argument("--size", type=int, default=256, help="crop size (classifier input)")
    parser.add_argument("--arch", default="efficientnet_b0")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--tta", nargs="+", default=["none", "seed"])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="CPU workers assumed in the kernel")
    parser.add_argument(
        "--gpu-crops-per-s",
        type=float,
        default=1000.0,
        help="assumed classifier throughput on the Kaggle GPU (crops/s per model per view)",
    )
    parser.add_argument(
        "--util-scale",
        type=float,
        default=1.0,
        help="multiply every assumed GPU utilisation (UTILISATION) by this, to test the "
        "projection's sensitivity",
    )
    parser.add_argument(
        "--network-repeat",
        type=int,
        default=1,
        help="timed runs of the stand-in networks on this CPU (no warm-up; 0 skips them)",
    )
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from hpa_kit.crop import crop_cells
    from hpa_kit.io import read_image
    from hpa_kit.model import ClassifierConfig, build_classifier
    from hpa_kit.predict import classify_crops
    from hpa_kit.rle import encode_label_image
    from hpa_kit.segment import ClassicalSegmenter
    from hpa_kit.submission import cells_prediction_string, write_submission

    torch.set_num_threads(args.threads)
    images = Path(args.samples) / "images"
    rows: list[tuple[str, float, str]] = []

    t_read, image = _median_time(lambda: read_image(images, args.image_id), args.repeat)
    rows.append(("read (4 PNGs)", t_read, "measured"))
    segmenter = ClassicalSegmenter()
    t_maps, maps = _median_time(lambda: segmenter.maps([image])[0], args.repeat)
    rows.append(("seg maps, classical (stand-in for the networks)", t_maps, "measured"))
    t_labels, labels = _median_time(
        lambda: segmenter.labels(maps[0], maps[1], image.shape[:2]), args.repeat
    )
    cells = labels[1]
    n_cells = int(len(np.unique(cells)) - 1)
    rows.append(("seg labels (maps -> full-resolution labels)", t_labels, "measured"))
    networks = _network_maps_seconds(image, args.network_repeat)
    t_net = None if networks is None else networks[0]
    if networks is not None:
        rows.append(
            (
                "seg maps, networks: cost-faithful stand-ins, float32 (CPU, "
                f"{args.threads} thread(s), {args.network_repeat} run(s), no warm-up; "
                f"{networks[1]:.1f} s CPU time)",
                t_net,
                "measured",
            )
        )
    t_crop, crops = _median_time(lambda: crop_cells(image, cells, size=args.size), args.repeat)
    rows.append((f"crops ({n_cells} cells at {args.size} px)", t_crop, "measured"))

    torch.manual_seed(0)
    config = ClassifierConfig(
        arch=args.arch, channels=("red", "green", "blue"), input_size=args.size
    )
    model = build_classifier(args.arch, config.in_chans, config.num_classes).eval()
    classify = {}
    probs = None
    for tta in args.tta:
        t_cls, probs = _median_time(
            lambda tta=tta: classify_crops(
                crops.crops, model, config, tta=tta, batch_size=args.batch_size
            ),
            args.repeat,
        )
        classify[tta] = t_cls
        rows.append(
            (f"classify, {args.arch}, tta {tta} (CPU, {args.threads} thread(s))", t_cls, "measured")
        )

    t_enc, masks = _median_time(lambda: encode_label_image(cells), args.repeat)
    rows.append(("encode masks", t_enc, "measured"))
    probs_by_cell = {int(c): p.tolist() for c, p in zip(crops.cell_ids, probs, strict=True)}

    with tempfile.TemporaryDirectory() as tmp:
        resume = Path(tmp) / "resume.jsonl"

        def fmt_and_resume():
            text = cells_prediction_string(masks, probs_by_cell, floor=0.0)
            with open(resume, "a") as f:
                f.write(json.dumps({"id": args.image_id, "prediction": text}) + "\n")
                f.flush()
                os.fsync(f.fileno())
            return text

        t_fmt, text = _median_time(fmt_and_resume, args.repeat)
        rows.append(("format (19 classes/cell) + fsynced resume line", t_fmt, "measured"))
        import pandas as pd

        ids = [f"id{k:05d}" for k in range(TEST_IMAGES)]
        sample = pd.DataFrame({"ID": ids, "ImageWidth": 2048, "ImageHeight": 2048})
        csv = Path(tmp) / "submission.csv"
        t_csv, _ = _median_time(lambda: write_submission(csv, dict.fromkeys(ids, text), sample), 1)
        csv_mb = csv.stat().st_size / 1e6

    # ---------------------------------------------------------------- report
    print(f"## bench_predict: one real {image.shape[0]}x{image.shape[1]} image, {n_cells} cells\n")
    print(
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores shared with other "
        f"work, torch {torch.__version__}, {args.threads} torch thread(s); median of {args.repeat}.\n"
    )
    print("| stage | seconds / image | |")
    print("|---|---:|---|")
    for name, seconds, kind in rows:
        print(f"| {name} | {seconds:.3f} | {kind} |")
    print(
        f"| write_submission, {TEST_IMAGES} rows like this one ({csv_mb:.0f} MB) | {t_csv:.2f} (once) | measured |"
    )
    print(
        f"\nPrediction string of this image: {len(text) / 1e3:.0f} kB ({n_cells} cells x 19 triplets).\n"
    )

    # ---------------------------------------------------------------- projection
    cpu_stages = (t_read + t_labels + t_crop + t_enc + t_fmt) * AREA_FACTOR
    print(
        f"### Projection for {PUBLIC_IMAGES} public / {TEST_IMAGES} test images (cells/image = "
        f"{n_cells} as measured; pixel stages x {AREA_FACTOR:.3f} for the test size mix)\n"
    )
    print(
        f"CPU work per image (read + seg labels + crops + encode + format, measured): {cpu_stages:.2f} s; "
        f"with {args.workers} worker processes: {cpu_stages / args.workers:.2f} s/image of wall time if "
        "the kernel's cores are as fast as these (assumed).\n"
    )
    seg_s = _print_gpu_segmentation(args)
    _print_kernels(args, seg_s, cpu_stages, n_cells, classify)
    cpu_only = {"classical": t_maps * AREA_FACTOR}
    if t_net is not None:
        cpu_only["networks (stand-ins, measured at 2048 px)"] = t_net * AREA_FACTOR
    for seg_name, seg in cpu_only.items():
        for tta in args.tta:
            serial = seg + cpu_stages + classify[tta]
            print(
                f"| CPU-only kernel, {seg_name} seg, 1 model, tta {tta}, no overlap | - | "
                f"{serial:.2f} (serial) | CPU | {_hours(serial, PUBLIC_IMAGES)} | "
                f"{_hours(serial, TEST_IMAGES)} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

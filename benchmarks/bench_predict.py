"""Per-image time of the predictor's stages on one real sample image, and a kernel projection.

Stages, each timed on the same image (median of --repeat runs after one warm-up):

- read: the four channel PNGs (:func:`hpa_kit.io.read_image`);
- seg maps (classical): :meth:`ClassicalSegmenter.maps` (the weights-free stand-in for the
  hpacellseg networks, which need a GPU and weights);
- seg labels: :meth:`ClassicalSegmenter.labels` (maps -> full-resolution labels, the CPU part
  that workers run for the network segmenter too);
- crops: :func:`hpa_kit.crop.crop_cells` at --size;
- classify: a randomly initialised timm --arch on the crops (3 channels, batches of
  --batch-size), for each TTA set in --tta;
- encode: :func:`hpa_kit.rle.encode_label_image`;
- format + resume: :func:`cells_prediction_string` (all 19 classes) and one fsynced resume
  line; csv: :func:`write_submission` of 1,776 rows each holding this image's string.

Then it projects the time of a 1,776-image test run from the measured CPU stages and an
assumed GPU classification throughput (--gpu-crops-per-s), and prints Markdown.

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
# Test-set size mix (REFERENCE.md section 1, public part): 462 of 559 at 2048, 68 at 1728,
# 29 at 3072; per-pixel stages scale with the area relative to 2048 x 2048.
AREA_FACTOR = (462 * 1.0 + 68 * (1728 / 2048) ** 2 + 29 * (3072 / 2048) ** 2) / 559


def _median_time(fn, repeat: int):
    fn()  # warm-up
    times = []
    result = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


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
        "--gpu-seg-s",
        type=float,
        default=0.15,
        help="assumed hpacellseg network maps per image on the GPU (s)",
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
    views = {"none": 1, "seed": 5, "d4": 8}
    print(
        f"### Projection for {TEST_IMAGES} test images (cells/image = {n_cells} as measured; "
        f"pixel stages x {AREA_FACTOR:.3f} for the test size mix)\n"
    )
    print(
        f"CPU work per image (read + seg labels + crops + encode + format, measured): {cpu_stages:.2f} s; "
        f"with {args.workers} worker processes: {cpu_stages / args.workers:.2f} s/image of wall time if "
        "the kernel's cores are as fast as these (assumed).\n"
    )
    print(
        "| setting | GPU s/image (assumed) | CPU s/image / workers (measured) | bound | total hours |"
    )
    print("|---|---:|---:|---|---:|")
    for tta in args.tta:
        for n_models in (1, 2):
            gpu = args.gpu_seg_s + n_cells * views.get(tta, 1) * n_models / args.gpu_crops_per_s
            cpu = cpu_stages / args.workers
            wall = max(gpu, cpu)
            bound = "CPU" if cpu >= gpu else "GPU"
            print(
                f"| GPU kernel, {n_models} model(s), tta {tta} | {gpu:.2f} | {cpu:.2f} | {bound} | "
                f"{wall * TEST_IMAGES / 3600:.2f} |"
            )
    for tta in args.tta:
        cpu_only = t_maps * AREA_FACTOR + cpu_stages + classify[tta]
        print(
            f"| CPU-only kernel, classical seg, 1 model, tta {tta}, no overlap | - | {cpu_only:.2f} (serial) | CPU | "
            f"{cpu_only * TEST_IMAGES / 3600:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

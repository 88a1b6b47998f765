"""Figures behind the demo's choices (hpa_kit.demo): segmentation scale and TTA set.

Usage (from the repository root):

    .venv/bin/python benchmarks/bench_demo.py segmentation            # ~30 s
    .venv/bin/python benchmarks/bench_demo.py tta --demo demo-out     # after `make demo`, ~15 s

``segmentation``: classical segmentation of synthetic images (``generate_image(size=S,
seed=(1, k))``, k < ``--n``) against their true cell labels, one-to-one at IoU >= 0.6
(:func:`hpa_kit.segment.match_labels`, pooled over images), with the unscaled defaults
(:class:`hpa_kit.segment.ClassicalSegmenter`) and with ``pixel_size = 2048 / S``, maps at scale
0.5 and 1.0 (pooled by :func:`hpa_kit.segment.match_dataset`). ``tta``: re-predicts a finished demo's test set with its checkpoint and
segmenter for each TTA set and scores each file (mAP, mask IoU >= 0.6). Torch uses one thread,
as the demo does. Prints JSON lines.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def segmentation(sizes: list[int], n: int) -> None:
    from hpa_kit.demo import HPA_SIZE
    from hpa_kit.segment import ClassicalSegmenter, match_dataset
    from hpa_kit.synth import generate_image

    for size in sizes:
        images = [generate_image(size=size, seed=(1, k)) for k in range(n)]
        for scale in (0.5, 1.0):
            segmenters = {
                "default": ClassicalSegmenter(scale),
                "scaled": ClassicalSegmenter(scale, pixel_size=HPA_SIZE / size),
            }
            for name, segmenter in segmenters.items():
                start = time.perf_counter()
                pairs = ((s.cell_labels, segmenter.segment([s.image])[0][1]) for s in images)
                match = match_dataset(pairs, threshold=0.6)
                seconds = (time.perf_counter() - start) / len(images)
                print(
                    json.dumps(
                        {
                            "size": size,
                            "scale": scale,
                            "segmenter": name,
                            "f1": round(match.f1, 4),
                            "tp": match.tp,
                            "n_true": match.n_true,
                            "n_pred": match.n_pred,
                            "s_per_image": round(seconds, 4),
                        }
                    ),
                    flush=True,
                )


def tta(demo: Path) -> None:
    from hpa_kit.demo import HPA_SIZE
    from hpa_kit.metric import score_submission
    from hpa_kit.predict import PredictOptions, predict_folder
    from hpa_kit.segment import ClassicalSegmenter

    summary = json.loads((demo / "summary.json").read_text())
    config = summary["config"]
    segmenter = ClassicalSegmenter(config["seg_scale"], pixel_size=HPA_SIZE / config["size"])
    out_dir = demo / "bench_tta"
    out_dir.mkdir(exist_ok=True)
    for name in ("none", "seed", "d4"):
        out = out_dir / f"submission_{name}.csv"
        options = PredictOptions(tta=name, num_workers=0, device="cpu", amp=False, progress=False)
        start = time.perf_counter()
        predict_folder(
            demo / "test" / "images",
            demo / "test" / "sample_submission.csv",
            [summary["paths"]["checkpoint"]],
            out=out,
            segmenter=segmenter,
            options=options,
        )
        seconds = time.perf_counter() - start
        score = score_submission(out, demo / "test" / "truth.csv")
        print(json.dumps({"tta": name, "map": round(score.map, 4), "seconds": round(seconds, 2)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    seg = sub.add_parser("segmentation")
    seg.add_argument("--sizes", type=int, nargs="+", default=[256, 384, 512])
    seg.add_argument("--n", type=int, default=8, help="images per size")
    tta_parser = sub.add_parser("tta")
    tta_parser.add_argument("--demo", type=Path, required=True, help="a finished demo folder")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    if args.what == "segmentation":
        segmentation(args.sizes, args.n)
    else:
        tta(args.demo)


if __name__ == "__main__":
    main()

"""Time hpa_kit.metric.score_submission (and validate_submission) on a synthetic test set.

Each image gets ~``--cells`` Voronoi-like cells (nearest of random seeds, within a radius) as
truth, and a noisy segmentation of the same cells as prediction (seeds jittered, radii
changed, some cells dropped, some spurious cells added). Truth: 1-3 image classes, each truth
cell carrying a non-empty subset. Prediction: every predicted cell x all 19 classes (the
worst case: ~570 triplets per image), confidences higher for the image's classes.

    .venv/bin/python benchmarks/bench_metric.py --n 1776 --size 512 --n-full 3 --full-size 2048

Also times write_submission of the same predictions. The five operations (score with mask IoU,
with bbox IoU, with ``--all-classes``, validate, write) run in interleaved rounds
(``benchmarks/_timing.py``: the order rotates every round, so load on a shared machine falls
on all alike), ``--rounds`` of them; each time is the median over the rounds, then the fastest
and slowest round. Figures are wall-clock seconds on whatever machine runs it; the first
round's first call pays pycocotools' import.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _timing import interleaved
from scipy import ndimage

from hpa_kit.labels import NUM_CLASSES
from hpa_kit.metric import score_submission
from hpa_kit.progress import progress_bar
from hpa_kit.rle import encode_label_image
from hpa_kit.submission import format_prediction_string, validate_submission, write_submission

COLUMNS = ["ID", "ImageWidth", "ImageHeight", "PredictionString"]


def _voronoi_cells(seeds: np.ndarray, radii: np.ndarray, size: int) -> np.ndarray:
    """int32 label image: pixel -> nearest seed (1-based) if within that seed's radius."""
    grid = np.ones((size, size), dtype=bool)
    rows = np.clip(seeds[:, 0].round().astype(int), 0, size - 1)
    cols = np.clip(seeds[:, 1].round().astype(int), 0, size - 1)
    grid[rows, cols] = False
    dist, (ir, ic) = ndimage.distance_transform_edt(grid, return_indices=True)
    owner = np.zeros((size, size), dtype=np.int32)
    owner[rows, cols] = np.arange(1, len(seeds) + 1, dtype=np.int32)
    labels = owner[ir, ic]
    labels[dist > radii[labels - 1]] = 0
    return labels


def make_image(
    rng: np.random.Generator, size: int, n_cells: int
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(truth labels, predicted labels, image classes) of one synthetic image."""
    seeds = rng.uniform(0, size, (n_cells, 2))
    radii = rng.uniform(0.08, 0.14, n_cells) * size
    truth = _voronoi_cells(seeds, radii, size)
    keep = rng.random(n_cells) > 0.1  # miss 10% of the cells
    jitter = rng.normal(0, 0.012 * size, (n_cells, 2))
    extra = rng.uniform(0, size, (max(1, n_cells // 10), 2))  # spurious cells
    pred_seeds = np.concatenate([seeds[keep] + jitter[keep], extra])
    pred_radii = np.concatenate(
        [
            radii[keep] * rng.uniform(0.8, 1.2, keep.sum()),
            rng.uniform(0.08, 0.14, len(extra)) * size,
        ]
    )
    pred = _voronoi_cells(pred_seeds, pred_radii, size)
    classes = sorted(rng.choice(NUM_CLASSES - 1, size=rng.integers(1, 4), replace=False).tolist())
    return truth, pred, classes


def make_rows(
    rng: np.random.Generator, image_id: str, size: int, n_cells: int
) -> tuple[tuple, tuple]:
    truth_labels, pred_labels, classes = make_image(rng, size, n_cells)
    truth_triplets = []
    for text in encode_label_image(truth_labels).values():
        cell_classes = [c for c in classes if rng.random() < 0.8] or classes[:1]
        truth_triplets += [(c, 1.0, text) for c in cell_classes]
    pred_triplets = []
    boost = np.zeros(NUM_CLASSES)
    boost[classes] = 0.5
    for text in encode_label_image(pred_labels).values():
        probs = np.clip(rng.random(NUM_CLASSES) * 0.5 + boost * rng.random(NUM_CLASSES), 0, 1)
        pred_triplets += [(c, float(probs[c]), text) for c in range(NUM_CLASSES)]
    truth_row = (image_id, size, size, format_prediction_string(truth_triplets))
    pred_row = (image_id, size, size, format_prediction_string(pred_triplets))
    return truth_row, pred_row


def make_set(n: int, size: int, n_cells: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    truth_rows, pred_rows = [], []
    for i in progress_bar(range(n), desc=f"generate {size}px", unit="image", file=sys.stderr):
        t, p = make_rows(rng, f"synth{size}_{i:05d}", size, n_cells)
        truth_rows.append(t)
        pred_rows.append(p)
    return pd.DataFrame(truth_rows, columns=COLUMNS), pd.DataFrame(pred_rows, columns=COLUMNS)


def bench(n: int, size: int, n_cells: int, seed: int, folder: Path, rounds: int) -> dict:
    t0 = time.perf_counter()
    truth, pred = make_set(n, size, n_cells, seed)
    t_gen = time.perf_counter() - t0
    truth_path, pred_path = folder / f"truth_{size}.csv", folder / f"sub_{size}.csv"
    truth.to_csv(truth_path, index=False)
    pred.to_csv(pred_path, index=False)
    n_triplets = int(pred["PredictionString"].str.count(" ").sum() + len(pred)) // 3
    out = {
        "images": n,
        "size": size,
        "triplets": n_triplets,
        "csv_mb": round(pred_path.stat().st_size / 1e6, 1),
        "generate_s": round(t_gen, 1),
    }
    sample = truth.drop(columns="PredictionString")
    predictions = dict(zip(pred["ID"], pred["PredictionString"], strict=True))
    fresh = itertools.count()
    times = interleaved(
        {
            "score_mask": lambda: score_submission(pred_path, truth_path, iou="mask"),
            "score_bbox": lambda: score_submission(pred_path, truth_path, iou="bbox"),
            "score_all_classes": lambda: score_submission(
                pred_path, truth_path, ignore_absent_classes=False
            ),
            "validate": lambda: validate_submission(pred_path, sample),
            "write": lambda: write_submission(
                folder / f"written_{size}_{next(fresh)}.csv", predictions, sample
            ),
        },
        rounds,
    )
    out["seconds"] = {name: t.as_dict(digits=3) for name, t in times.items()}
    for name in ("mask", "bbox", "all_classes"):
        out[f"map_{name}"] = round(times[f"score_{name}"].result.map, 4)
    out["validate_ok"] = times["validate"].result.ok
    out["write_placeholders"] = len(times["write"].result.placeholders)
    out["score_mask_ms_per_image"] = round(1000 * times["score_mask"].median / n, 2)
    print(f"\n{n} images at {size} px, {n_triplets} triplets, {out['csv_mb']} MB "
          f"(wall seconds: median over {rounds} rounds, then the fastest and slowest):\n")  # fmt: skip
    print("| " + " | ".join(times) + " |")
    print("|" + "---|" * len(times))
    print("| " + " | ".join(t.text(fmt="{:.2f}", unit="") for t in times.values()) + " |")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1776, help="images at --size (default 1776)")
    parser.add_argument("--size", type=int, default=512, help="side of those images (512)")
    parser.add_argument("--n-full", type=int, default=3, help="images at --full-size (3)")
    parser.add_argument("--full-size", type=int, default=2048, help="full side (2048)")
    parser.add_argument("--cells", type=int, default=30, help="truth cells per image (30)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=1, help="interleaved timing rounds")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        for n, size in ((args.n, args.size), (args.n_full, args.full_size)):
            if n <= 0:
                continue
            out = bench(n, size, args.cells, args.seed, Path(tmp), args.rounds)
            print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

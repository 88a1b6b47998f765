"""Peak memory of ``hpa-kit validate`` and ``hpa-kit score`` on hostile submission files, and
the effect of the tie order on a tie-heavy submission.

Memory (default): builds the hostile files in a temporary folder, runs each command in a fresh
process (``python -m hpa_kit ...`` started by a small wrapper process that reads its peak RSS
with ``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss``) and prints one line per case and
command: exit code, peak MB, seconds, the first line of stderr. Cases, all at 2048x2048:

- ``bomb``: one row whose mask token (~270 KB of text) inflates to ~280 MB of counts;
- ``checkerboards``: one row of 100 distinct checkerboard masks (~1 MB file);
- ``big``: a file of ``--mb`` MB (default 250) of realistic rows (40 cells x 19 classes);
- ``extra_rows``: a file of ``--mb`` MB of tiny rows whose ids are not in the sample;
- ``long_row``: one row as long as a line may be (``MAX_LINE_BYTES``, 32 MiB) of the
  shortest triplets (~1.2M), scored against itself as truth.

Ties (``--ties``): scores a tie-heavy synthetic submission (every cell of an image carries
the image's 19 confidences, as an image-level baseline does) as written and with every tie
reversed (each PredictionString's triplets and the truth's rows in reverse order: the stable
sort then puts equal confidences the other way round), and prints both mAPs.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_hostile.py --mb 250
    PYTHONPATH=. .venv/bin/python benchmarks/bench_hostile.py --ties --images 300

Timing and memory depend on the machine; the figures it prints are what it measured.
"""

from __future__ import annotations

import argparse
import base64
import json
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

from hpa_kit.labels import NUM_CLASSES
from hpa_kit.rle import empty_mask_string, encode_binary_mask, encode_label_image

SIZE = 2048
HEADER = "ID,ImageWidth,ImageHeight,PredictionString\n"

_WRAPPER = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"rc": done.returncode, "peak_mb": peak_kb / 1024,
                  "seconds": time.perf_counter() - start,
                  "stderr": done.stderr.strip().splitlines()[-1:]}))
"""


def measure(args: list[str]) -> dict:
    """Exit code, peak RSS (MB), seconds and last stderr line of ``python -m hpa_kit *args``."""
    command = [sys.executable, "-c", _WRAPPER, sys.executable, "-m", "hpa_kit", *args]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def _voronoi(rng: np.random.Generator, n_cells: int) -> np.ndarray:
    from scipy import ndimage

    seeds = rng.uniform(0, SIZE, (n_cells, 2)).astype(int)
    grid = np.ones((SIZE, SIZE), dtype=bool)
    grid[seeds[:, 0], seeds[:, 1]] = False
    dist, (rows, cols) = ndimage.distance_transform_edt(grid, return_indices=True)
    owner = np.zeros((SIZE, SIZE), dtype=np.int32)
    owner[seeds[:, 0], seeds[:, 1]] = np.arange(1, n_cells + 1)
    labels = owner[rows, cols]
    labels[dist > 180] = 0
    return labels


def write_sample(path: Path, ids: list[str]) -> None:
    with open(path, "w") as handle:
        handle.write(HEADER)
        row_end = f",{SIZE},{SIZE},0 1 {empty_mask_string(SIZE, SIZE)}\n"
        handle.writelines(image_id + row_end for image_id in ids)


def bomb_case(folder: Path) -> tuple[Path, Path, Path]:
    counts = b"0" * 280_000_000  # zero-length runs: ~1000:1 under zlib
    token = base64.b64encode(zlib.compress(counts, 9)).decode()
    cell = encode_binary_mask(np.pad(np.ones((20, 20), dtype=bool), ((0, SIZE - 20),) * 2))
    write_sample(folder / "sample.csv", ["img"])
    (folder / "truth.csv").write_text(HEADER + f"img,{SIZE},{SIZE},0 1 {cell}\n")
    (folder / "bomb.csv").write_text(HEADER + f"img,{SIZE},{SIZE},0 0.5 {token}\n")
    return folder / "bomb.csv", folder / "sample.csv", folder / "truth.csv"


def checkerboard_case(folder: Path) -> tuple[Path, Path, Path]:
    board = np.indices((SIZE, SIZE)).sum(axis=0) % 2 == 0
    masks = []
    for k in range(100):  # distinct: one more pixel each
        mask = board.copy()
        mask[k // SIZE + 1, k % SIZE] = True
        masks.append(encode_binary_mask(mask))
    cell = encode_binary_mask(np.pad(np.ones((20, 20), dtype=bool), ((0, SIZE - 20),) * 2))
    write_sample(folder / "sample.csv", ["img"])
    (folder / "truth.csv").write_text(HEADER + f"img,{SIZE},{SIZE},0 1 {cell}\n")
    row = " ".join(f"0 0.5 {m}" for m in masks)
    (folder / "boards.csv").write_text(HEADER + f"img,{SIZE},{SIZE},{row}\n")
    return folder / "boards.csv", folder / "sample.csv", folder / "truth.csv"


def big_case(folder: Path, megabytes: float) -> tuple[Path, Path, Path]:
    rng = np.random.default_rng(0)
    masks = list(encode_label_image(_voronoi(rng, 40)).values())
    confidences = np.round(rng.random((len(masks), NUM_CLASSES)), 4)
    row = " ".join(
        f"{c} {confidences[i, c]:g} {m}" for i, m in enumerate(masks) for c in range(NUM_CLASSES)
    )
    truth_row = " ".join(f"{c} 1 {m}" for m in masks for c in (0, 16))
    n_rows = max(1, int(megabytes * 1e6 / (len(row) + 40)))
    ids = [f"img{i:06d}" for i in range(n_rows)]
    write_sample(folder / "sample.csv", ids)
    with open(folder / "big.csv", "w") as sub, open(folder / "truth.csv", "w") as truth:
        sub.write(HEADER)
        truth.write(HEADER)
        for image_id in ids:
            sub.write(f"{image_id},{SIZE},{SIZE},{row}\n")
            truth.write(f"{image_id},{SIZE},{SIZE},{truth_row}\n")
    return folder / "big.csv", folder / "sample.csv", folder / "truth.csv"


def extra_rows_case(folder: Path, megabytes: float) -> tuple[Path, Path, Path]:
    placeholder = f"0 1 {empty_mask_string(SIZE, SIZE)}"
    ids = [f"img{i:06d}" for i in range(1000)]
    write_sample(folder / "sample.csv", ids)
    (folder / "truth.csv").write_text((folder / "sample.csv").read_text())
    line_bytes = len(f"x00000000,{SIZE},{SIZE},{placeholder}\n")
    n_rows = int(megabytes * 1e6 / line_bytes)
    with open(folder / "extra.csv", "w") as handle:
        handle.write(HEADER)
        for start in range(0, n_rows, 100_000):
            handle.writelines(
                f"x{i:08d},{SIZE},{SIZE},{placeholder}\n"
                for i in range(start, min(n_rows, start + 100_000))
            )
    return folder / "extra.csv", folder / "sample.csv", folder / "truth.csv"


def long_row_case(folder: Path) -> tuple[Path, Path, Path]:
    from hpa_kit.submission import MAX_LINE_BYTES

    empty = empty_mask_string(SIZE, SIZE)
    n = (MAX_LINE_BYTES - 100) // len(f"0 0.123 {empty} ")
    row = " ".join(f"0 0.{i % 1000:03d} {empty}" for i in range(n))
    write_sample(folder / "sample.csv", ["img"])
    (folder / "long.csv").write_text(HEADER + f"img,{SIZE},{SIZE},{row}\n")
    return folder / "long.csv", folder / "sample.csv", folder / "long.csv"


CASES = ("bomb", "checkerboards", "big", "extra_rows", "long_row")


def run_memory(megabytes: float, cases: list[str]) -> int:
    builders = {
        "bomb": bomb_case,
        "checkerboards": checkerboard_case,
        "big": lambda folder: big_case(folder, megabytes),
        "extra_rows": lambda folder: extra_rows_case(folder, megabytes),
        "long_row": long_row_case,
    }
    for name in cases:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            sub, sample, truth = builders[name](Path(tmp))
            size_mb = sub.stat().st_size / 1e6
            print(f"{name}: {size_mb:.1f} MB file (built in {time.perf_counter() - start:.0f} s)")
            for command in (
                ["validate", str(sub), "--sample", str(sample)],
                ["score", str(sub), "--truth", str(truth)],
            ):
                out = measure(command)
                print(
                    f"  {command[0]:8s} exit {out['rc']}  peak {out['peak_mb']:7.1f} MB  "
                    f"{out['seconds']:6.1f} s  {' '.join(out['stderr'])[:150]}",
                    flush=True,
                )
    return 0


def _tie_rows(rng: np.random.Generator, image_id: str, size: int) -> tuple[tuple, tuple]:
    """(truth row, tie-heavy submission row) of one synthetic image: predicted cells are the
    true cells with some missed and some spurious, all carrying the image's confidences."""
    from scipy import ndimage

    n_cells = int(rng.integers(5, 25))
    seeds = rng.uniform(0, size, (n_cells, 2)).astype(int)
    grid = np.ones((size, size), dtype=bool)
    grid[seeds[:, 0], seeds[:, 1]] = False
    dist, (rows, cols) = ndimage.distance_transform_edt(grid, return_indices=True)
    owner = np.zeros((size, size), dtype=np.int32)
    owner[seeds[:, 0], seeds[:, 1]] = np.arange(1, n_cells + 1)
    labels = owner[rows, cols] * (dist < size / 8)
    cells = list(encode_label_image(labels).values())
    classes = rng.choice(NUM_CLASSES - 1, size=int(rng.integers(1, 4)), replace=False)
    truth = " ".join(f"{c} 1 {m}" for m in cells for c in classes if rng.random() < 0.8)
    kept = [m for m in cells if rng.random() < 0.85]
    spurious = [encode_binary_mask(np.roll(labels == k + 1, size // 3, axis=k)) for k in (0, 1)]
    image_conf = np.round(rng.random(NUM_CLASSES) * 0.5, 2)
    image_conf[classes] = np.round(0.5 + rng.random(classes.size) * 0.5, 2)
    pred = " ".join(f"{c} {image_conf[c]:g} {m}" for m in kept + spurious for c in range(19))
    return (image_id, size, size, truth), (image_id, size, size, pred)


def run_ties(n_images: int, size: int, seed: int) -> int:
    import pandas as pd

    from hpa_kit.metric import score_submission

    rng = np.random.default_rng(seed)
    pairs = [_tie_rows(rng, f"img{i:05d}", size) for i in range(n_images)]
    columns = ["ID", "ImageWidth", "ImageHeight", "PredictionString"]
    truth = pd.DataFrame([t for t, _ in pairs], columns=columns)
    sub = pd.DataFrame([p for _, p in pairs], columns=columns)

    def reverse(text: str) -> str:
        tokens = text.split()
        triplets = [tokens[k : k + 3] for k in range(0, len(tokens), 3)]
        return " ".join(" ".join(t) for t in triplets[::-1])

    as_written = score_submission(sub, truth).map
    reversed_sub = sub.assign(PredictionString=sub["PredictionString"].map(reverse))
    reversed_truth = truth.iloc[::-1].reset_index(drop=True)
    reversed_map = score_submission(reversed_sub, reversed_truth).map
    print(
        f"ties: {n_images} images of {size} px, seed {seed}: mAP as written {as_written:.4f}, "
        f"ties reversed {reversed_map:.4f}, difference {abs(as_written - reversed_map):.4f}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=250.0, help="size of the large files (250)")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--ties", action="store_true", help="measure the tie order instead")
    parser.add_argument("--images", type=int, default=300, help="images for --ties (300)")
    parser.add_argument("--size", type=int, default=256, help="image side for --ties (256)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.ties:
        return run_ties(args.images, args.size, args.seed)
    return run_memory(args.mb, args.cases)


if __name__ == "__main__":
    sys.exit(main())

"""Time synthetic image generation (hpa_kit.synth) at the competition's sizes.

Usage (from the repository root):

    .venv/bin/python benchmarks/bench_synth.py --sizes 1728 2048 3072 --repeat 3 --write 2

For each size it times ``generate_image`` over ``--repeat`` seeds (wall and process CPU
seconds: the median over the seeds, then the fastest and slowest, ``benchmarks/_timing.py``'s
``Spread``; cell counts), then, with ``--write N``, ``write_dataset`` of N
images at 2048 px (generation + 4 channel PNGs + 2 label PNGs + truth RLE + CSVs) per image.
Single process; OpenCV may use its own threads inside cv2 calls.

Pattern separability (``--separability N``, needs scikit-learn): single-class cells of N
synthetic 512 px images, each cropped to its bounding square (other cells masked), resized to
``--crop`` px; 13 hand-made features of the green channel relative to the blue nucleus and the
cell (share in nucleus / cytoplasm / rings, texture, spots); a random forest trained on the
cells of the first two thirds of the images, accuracy on the rest:

    .venv/bin/python benchmarks/bench_synth.py --sizes --write 0 --separability 120 --crop 64
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time

from _timing import Spread


def _cell_crops(synth, crop: int) -> list:
    """(crop x crop x 4 uint8, class) for each single-class cell, other cells masked."""
    import cv2
    import numpy as np
    from scipy import ndimage as ndi

    out = []
    for index, box in enumerate(ndi.find_objects(synth.cell_labels), start=1):
        if box is None or len(synth.cell_classes[index]) != 1:
            continue
        own = synth.cell_labels[box] == index
        side = max(own.shape)
        square = np.zeros((side, side, 4), np.uint8)
        square[: own.shape[0], : own.shape[1]] = synth.image[box] * own[..., None]
        out.append(
            (
                cv2.resize(square, (crop, crop), interpolation=cv2.INTER_AREA),
                synth.cell_classes[index][0],
            )
        )
    return out


def _features(crop) -> list[float]:
    import cv2
    import numpy as np
    from scipy import ndimage as ndi

    green = crop[..., 1].astype(np.float32)
    blue = crop[..., 2].astype(np.float32)
    body = crop[..., 0].astype(np.float32) + crop[..., 3]
    cell = (body + blue) > 15
    nucleus = blue > 0.5 * blue.max()
    if nucleus.sum() > 10:
        nucleus = ndi.binary_opening(nucleus)
    cytoplasm = cell & ~nucleus
    nucleus_ring = ndi.binary_dilation(nucleus, iterations=2) & ~ndi.binary_erosion(
        nucleus, iterations=2
    )
    cell_ring = cell & ~ndi.binary_erosion(cell, iterations=2)
    total = green[cell].sum() + 1e-3
    mean = (green[cell].mean() if cell.any() else 0.0) + 1e-3
    feats = [
        green[cell].mean(),
        green[nucleus].sum() / total,
        green[cytoplasm].sum() / total,
        (green[nucleus_ring].mean() if nucleus_ring.any() else 0.0) / mean,
        (green[cell_ring].mean() if cell_ring.any() else 0.0) / mean,
    ]
    for region in (nucleus, cytoplasm):
        values = green[region] if region.sum() > 5 else np.zeros(2, np.float32)
        m = values.mean() + 1e-3
        feats += [
            values.std() / m,
            float((values > 2 * m + 1).mean()),
            np.percentile(values, 95) / m,
        ]
    feats.append(np.abs(cv2.Laplacian(green, cv2.CV_32F))[cell].mean() / mean)
    peaks = (ndi.maximum_filter(green, 5) == green) & (green > 0.5 * green.max() + 1) & cell
    feats.append(float(peaks.sum()))
    return feats


def separability(n_images: int, crop: int) -> dict:
    import numpy as np

    try:
        from sklearn.ensemble import RandomForestClassifier
    except ImportError as exc:
        raise ImportError("--separability needs scikit-learn: pip install scikit-learn") from exc
    from hpa_kit.synth import generate_image

    per_image = [_cell_crops(generate_image(size=512, seed=s), crop) for s in range(n_images)]
    split = 2 * n_images // 3
    train = [c for cells in per_image[:split] for c in cells]
    test = [c for cells in per_image[split:] for c in cells]
    x_train = np.array([_features(x) for x, _ in train])
    x_test = np.array([_features(x) for x, _ in test])
    y_train = np.array([y for _, y in train])
    y_test = np.array([y for _, y in test])
    model = RandomForestClassifier(300, random_state=0, n_jobs=1).fit(x_train, y_train)
    accuracy = float((model.predict(x_test) == y_test).mean())
    classes, counts = np.unique(np.concatenate([y_train, y_test]), return_counts=True)
    return {
        "images": n_images,
        "crop": crop,
        "cells": int(counts.sum()),
        "cells_per_class": {int(c): int(n) for c, n in zip(classes, counts, strict=True)},
        "test_cells": len(y_test),
        "accuracy": round(accuracy, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[1728, 2048, 3072])
    parser.add_argument("--repeat", type=int, default=3, help="seeds per size")
    parser.add_argument("--write", type=int, default=2, help="images for write_dataset (0: skip)")
    parser.add_argument(
        "--separability", type=int, default=0, metavar="N", help="images for the pattern check"
    )
    parser.add_argument("--crop", type=int, default=64, help="crop size for --separability")
    args = parser.parse_args()

    import cv2
    import numpy as np

    from hpa_kit.synth import generate_image, write_dataset

    generate_image(size=128, seed=0)  # warm imports and OpenCV
    results: dict[str, object] = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "cv2_threads": cv2.getNumThreads(),
        "generate": {},
    }
    for size in args.sizes:
        times, cpu, cells = [], [], []
        for seed in range(args.repeat):
            start, start_cpu = time.perf_counter(), time.process_time()
            synth = generate_image(size=size, seed=seed)
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
            cells.append(synth.num_cells)
        wall, process = Spread(tuple(times)), Spread(tuple(cpu))
        results["generate"][str(size)] = {
            "wall_s": wall.as_dict(digits=3),
            "cpu_s": process.as_dict(digits=3),
            "cells": cells,
        }
        print(
            f"generate_image {size}x{size}: wall {wall.text(fmt='{:.3f}')}, process CPU "
            f"{process.text(fmt='{:.3f}')} over {args.repeat} seeds; cells {cells}",
            flush=True,
        )
    if args.write > 0:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            data = write_dataset(tmp, n=args.write, size=2048, seed=0)
            per_image = (time.perf_counter() - start) / args.write
        results["write_dataset_2048_s_per_image"] = round(per_image, 3)
        print(
            f"write_dataset 2048 px: {per_image:.3f} s per image over {args.write} images "
            f"({data.num_cells} cells)"
        )
    if args.separability > 0:
        sep = separability(args.separability, args.crop)
        results["separability"] = sep
        print(
            f"separability: {sep['crop']} px crops, {sep['cells']} single-class cells from "
            f"{sep['images']} images, held-out accuracy {sep['accuracy']:.4f} "
            f"({sep['test_cells']} test cells)"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()

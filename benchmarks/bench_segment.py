"""Segmentation: quarter-scale labelling against full scale and hpacellseg's label_cell.

Maps. The networks' weights are not available here, so full-resolution prediction maps are
built from each real sample image and its hpacellseg mask (masks/{id}_predictedmask.png, which
is hpacellseg's own output, so the cells have realistic shapes, sizes and contacts), in four
kinds, each deterministic (seeded by ``--seed``):

- ``clean``: cell foreground = the mask's foreground, gaussian-smoothed (sigma 6 px) and
  modulated by smooth multiplicative noise (0.75-1.0), x 255; cell border = the lines where
  two cells meet once each is grown by 4 px (``skimage.segmentation.expand_labels``;
  hpacellseg's own masks never touch, its last hole filling cuts every contact), widened to
  12 px and smoothed, peaking near 200, with the foreground lowered there as the network's is;
  nuclei foreground = the classical predictor's nuclei map of the image at full scale
  (logistic of the smoothed blue channel), nuclei border 0.
- ``weak-borders``: as clean, but each contact between two cells keeps a weak border (x 0.1
  to x 0.35) or none at all (one contact in three, drawn per pair of cells), and the
  foreground dips only as much as its border: touching cells that the border channel no
  longer separates.
- ``uneven``: as clean, with both foregrounds multiplied by a smooth illumination field
  (0.35 to 1.0: a gradient across the image times low-frequency noise): dim cells near the
  thresholds.
- ``noisy``: as clean, plus spatially correlated noise (sd 25 grey levels, smoothed over
  ~1.5 px) on the cell foreground, the cell border and the nuclei foreground, clipped.

Fidelity and speed, per image and kind. ``label_cells`` at scale 1.0 is checked identical to
``hpa_kit.segment._reference.reference_label_cell``, a direct scikit-image rendering of
hpacellseg's label_cell (REFERENCE.md section 3; no speed-ups inside). The fast path is
``maps_to_labels`` on the maps area-resized to 0.25 (what the networks give at the project's
default scale), upsampled to full size. Reported: the full-scale cells the fast result matches
at IoU >= 0.6 (one to one) and their mean IoU, and the time of each path. The three paths run
in interleaved rounds (``benchmarks/_timing.py``: the order rotates every round; the 0.25
path runs ``--number`` times per value, the mean taken); each ratio is the median of the
per-round ratios, with the lowest and highest round in brackets.

On the clean maps also: exact (scikit-image over the whole image) vs reduced floods at both
scales (``SegConfig.exact_floods``: pixels that differ, the ratios of the default 0.25 path
to each full-scale mode, and a check with saturated 0.25 foregrounds where equal-value races
can happen); where the time goes (the ``skimage.segmentation.watershed`` calls inside
``label_cells`` clocked through a thin wrapper, median per call); and the CPU work of
``segment`` without the network forward (``network_inputs`` + ``maps_to_labels`` at 0.25) with
the classical predictor and its cell F1 against the hpacellseg masks (IoU >= 0.5).

    HPA_KIT_SAMPLES=../shared/data/hpa-samples .venv/bin/python benchmarks/bench_segment.py \\
        --rounds 5 --number 10
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from _timing import Spread, Timing, interleaved, ratio

KINDS = ("clean", "weak-borders", "uneven", "noisy")
IOU = 0.6  # the competition's mask IoU threshold


@dataclass(frozen=True)
class Layers:
    """What every kind of map is built from (full resolution, float32)."""

    foreground: np.ndarray  # cell foreground in [0, 1], before the border dip
    strength: np.ndarray  # 1 on both pixels of every contact between two grown cells, else 0
    nuclei: np.ndarray  # the classical nuclei map's foreground, 0-255
    seed: int


def _smooth_noise(shape: tuple[int, int], rng: np.random.Generator, cell: int) -> np.ndarray:
    """Noise in [0, 1] that varies over about ``cell`` pixels (bicubic upsampling of a grid)."""
    import cv2

    grid = rng.random((shape[0] // cell + 1, shape[1] // cell + 1)).astype(np.float32)
    return np.clip(cv2.resize(grid, shape[::-1], interpolation=cv2.INTER_CUBIC), 0, 1)


def _contacts(grown: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Both pixels of every 4-neighbour contact between two cells: rows, cols, and a key per
    pair of cells (``min * K + max``)."""
    rows, cols, keys = [], [], []
    limit = int(grown.max()) + 1
    height, width = grown.shape
    for dr, dc in ((1, 0), (0, 1)):
        a, b = grown[dr:, dc:], grown[: height - dr, : width - dc]
        touch = (a != b) & (a > 0) & (b > 0)
        r, c = np.nonzero(touch)  # b's pixel; a's is (r + dr, c + dc)
        key = np.minimum(a, b)[touch].astype(np.int64) * limit + np.maximum(a, b)[touch]
        rows += [r, r + dr]
        cols += [c, c + dc]
        keys += [key, key]
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(keys)


def build_layers(image: np.ndarray, mask: np.ndarray, *, seed: int = 0) -> Layers:
    """The shared layers of one sample (see the module doc); costs a full-scale classical map."""
    import cv2
    from skimage.segmentation import expand_labels

    from hpa_kit.segment import classical_maps

    rng = np.random.default_rng(seed)
    noise = 0.75 + 0.25 * _smooth_noise(mask.shape, rng, 64)
    foreground = cv2.GaussianBlur((mask > 0).astype(np.float32), (0, 0), 6) * noise
    rows, cols, _ = _contacts(expand_labels(mask, 4))
    strength = np.zeros(mask.shape, np.float32)
    strength[rows, cols] = 1.0
    nuclei_maps, _ = classical_maps(image, scale=1.0)
    return Layers(foreground, strength, nuclei_maps[..., 2].astype(np.float32), seed)


def _weak_contacts(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Contact strengths for ``weak-borders``: per pair of cells 0 (one in three) or 0.1-0.35."""
    from skimage.segmentation import expand_labels

    rows, cols, keys = _contacts(expand_labels(mask, 4))
    pairs, index = np.unique(keys, return_inverse=True)
    gains = np.where(rng.random(pairs.size) < 1 / 3, 0.0, rng.uniform(0.1, 0.35, pairs.size))
    strength = np.zeros(mask.shape, np.float32)
    np.maximum.at(strength, (rows, cols), gains[index].astype(np.float32))
    return strength


def kind_maps(layers: Layers, mask: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Full-resolution ``(nuclei_maps, cell_maps)`` uint8 of one kind (see the module doc)."""
    import cv2
    from scipy import ndimage as ndi

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    rng = np.random.default_rng([layers.seed, KINDS.index(kind)])
    strength = _weak_contacts(mask, rng) if kind == "weak-borders" else layers.strength
    diamond = ndi.iterate_structure(ndi.generate_binary_structure(2, 1), 6)
    wide = ndi.grey_dilation(strength, footprint=diamond, mode="constant", cval=0.0)
    border = cv2.GaussianBlur(wide, (0, 0), 3)
    foreground, nuclei = layers.foreground, layers.nuclei
    if kind == "uneven":
        rows, cols = np.mgrid[: mask.shape[0], : mask.shape[1]].astype(np.float32)
        ramp = (rows / mask.shape[0] + cols / mask.shape[1]) / 2
        field = 0.35 + 0.65 * (0.5 * (1 - ramp) + 0.5 * _smooth_noise(mask.shape, rng, 512))
        foreground, nuclei = foreground * field, nuclei * field
    layers_255 = [255 * foreground * (1 - 0.8 * border), 200 * border, nuclei]
    if kind == "noisy":
        for k, layer in enumerate(layers_255):
            noise = cv2.GaussianBlur(
                rng.standard_normal(mask.shape).astype(np.float32), (0, 0), 1.5
            )
            layers_255[k] = layer + noise * (25 / max(float(noise.std()), 1e-6))
    cell_fg, cell_border, nuclei_fg = (np.clip(x, 0, 255).astype(np.uint8) for x in layers_255)
    zeros = np.zeros(mask.shape, np.uint8)
    return np.dstack([zeros, zeros, nuclei_fg]), np.dstack([zeros, cell_border, cell_fg])


@contextmanager
def _clocked_watershed():
    """Clock ``skimage.segmentation.watershed`` as ``hpa_kit.segment._label`` calls it.

    Yields a one-item list holding the seconds spent in it since the last reset.
    """
    import types

    from hpa_kit.segment import _label

    module = _label.segmentation
    spent = [0.0]

    def watershed(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return module.watershed(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - t0

    _label.segmentation = types.SimpleNamespace(watershed=watershed)
    try:
        yield spent
    finally:
        _label.segmentation = module


def _area_resize(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    return cv2.resize(maps, size[::-1], interpolation=cv2.INTER_AREA)


def _paths(nuc: np.ndarray, cell: np.ndarray, *, clean: bool) -> dict[str, Callable[[], tuple]]:
    """The alternatives timed on one image's maps: reference, label_cells 1.0, 0.25 path
    (and on clean maps the other flood mode at each scale)."""
    from hpa_kit.segment import SegConfig, label_cells, maps_to_labels, reduced_shape
    from hpa_kit.segment._reference import reference_label_cell

    shape = nuc.shape[:2]
    nuc_q, cell_q = (_area_resize(m, reduced_shape(shape, 0.25)) for m in (nuc, cell))
    full, quarter = SegConfig(scale=1.0), SegConfig(scale=0.25)
    paths = {
        "reference": lambda: reference_label_cell(nuc, cell),
        "full": lambda: label_cells(nuc, cell, full),
        "fast": lambda: maps_to_labels(nuc_q, cell_q, shape=shape, config=quarter),
    }
    if clean:
        full_reduced = dataclasses.replace(full, exact_floods=False)
        quarter_exact = dataclasses.replace(quarter, exact_floods=True)
        paths["full_reduced"] = lambda: label_cells(nuc, cell, full_reduced)
        paths["fast_exact"] = lambda: maps_to_labels(
            nuc_q, cell_q, shape=shape, config=quarter_exact
        )
    return paths


def _time_paths(paths, args) -> tuple[dict[str, Timing], dict[str, float]]:
    """Interleaved rounds of ``paths``; also the median watershed seconds per call of each."""
    spent_by: dict[str, list[float]] = {name: [] for name in paths}

    def clocked(name, fn):
        def run():
            spent[0] = 0.0
            out = fn()
            spent_by[name].append(spent[0])
            return out

        return run

    with _clocked_watershed() as spent:
        times = interleaved(
            {name: clocked(name, fn) for name, fn in paths.items()},
            args.rounds,
            number={"fast": args.number, "fast_exact": args.number},
            warmup=0,
        )
    return times, {name: float(np.median(v)) for name, v in spent_by.items()}


def _saturated_races(nuc_q: np.ndarray, cell_q: np.ndarray) -> str:
    """Pixels where exact and reduced floods differ at 0.25 once the foregrounds saturate."""
    from hpa_kit.segment import SegConfig, label_cells

    quarter = SegConfig(scale=0.25)
    quarter_exact = dataclasses.replace(quarter, exact_floods=True)
    out = []
    for gain in (1.5, 3.0):
        nuc_s, cell_s = nuc_q.copy(), cell_q.copy()
        for maps in (nuc_s, cell_s):
            maps[..., 2] = np.clip(maps[..., 2] * gain, 0, 255).astype(np.uint8)
        exact = label_cells(nuc_s, cell_s, quarter_exact)[1]
        reduced = label_cells(nuc_s, cell_s, quarter)[1]
        out.append(f"x{gain:g}: {int((exact != reduced).sum())} of {int((exact > 0).sum())} px "
                   f"({(cell_s[..., 2] == 255).mean():.0%} at 255)")  # fmt: skip
    return "; ".join(out)


def _x(spread: Spread) -> str:
    return spread.text(fmt="{:.1f}", unit="x")


def _ms(timing: Spread) -> str:
    return timing.text(fmt="{:.1f}", unit="", scale=1000)


def _s(timing: Spread) -> str:
    return timing.text(fmt="{:.2f}", unit="")


def measure_kind(image_id: str, nuc: np.ndarray, cell: np.ndarray, kind: str, args) -> dict:
    """One image and kind: identity with the reference, fidelity and interleaved timings."""
    from hpa_kit.segment import match_labels

    times, watershed = _time_paths(_paths(nuc, cell, clean=kind == "clean"), args)
    ref_nuclei, ref_cells = times["reference"].result
    nuclei_full, cells_full = times["full"].result
    cells_fast = times["fast"].result[1]
    m = match_labels(cells_full, cells_fast, threshold=IOU)
    identical = np.array_equal(ref_cells, cells_full) and np.array_equal(ref_nuclei, nuclei_full)
    return {
        "image": image_id[:8],
        "size": "x".join(map(str, nuc.shape[:2])),
        "kind": kind,
        "times": times,
        "watershed": watershed,
        "identical": identical,
        "match": m,
        "vs_reference": ratio(times["reference"], times["fast"]),
        "vs_full": ratio(times["full"], times["fast"]),
        "cells_full": cells_full,
    }


def _without_labels(r: dict) -> dict:
    """``r`` without the label images (16 MB each at 2048 px): what the summary needs."""
    times = {name: Timing(t.values) for name, t in r["times"].items()}
    return {**{k: v for k, v in r.items() if k != "cells_full"}, "times": times}


def _fidelity_row(r: dict) -> str:
    t, m = r["times"], r["match"]
    return (
        f"| {r['image']} | {r['size']} | {r['kind']} | {m.n_true} | "
        f"{'yes' if r['identical'] else 'NO'} | {_s(t['reference'])} | {_s(t['full'])} | "
        f"{_ms(t['fast'])} | {_x(r['vs_reference'])} | {_x(r['vs_full'])} | "
        f"{m.tp}/{m.n_true} ({m.recall:.0%}), precision {m.precision:.0%} | {m.mean_iou:.3f} |"
    )


def _modes_row(r: dict, nuc: np.ndarray, cell: np.ndarray) -> str:
    from hpa_kit.segment import match_labels, reduced_shape

    t = r["times"]
    cells_full, cells_fast = r["cells_full"], t["fast"].result[1]
    cells_full_red, cells_fast_exact = t["full_reduced"].result[1], t["fast_exact"].result[1]
    m_red = match_labels(cells_full, cells_full_red)
    small = reduced_shape(nuc.shape[:2], 0.25)
    races = _saturated_races(_area_resize(nuc, small), _area_resize(cell, small))
    return (
        f"| {r['image']} | {r['size']} | {_s(t['full'])} | {_s(t['full_reduced'])} | "
        f"{int((cells_full_red != cells_full).sum())} ({m_red.tp}/{m_red.n_true} cells, "
        f"IoU {m_red.mean_iou:.4f}) | {_ms(t['fast_exact'])} | {_ms(t['fast'])} | "
        f"{int((cells_fast != cells_fast_exact).sum())} | {_x(r['vs_full'])} | "
        f"{_x(ratio(t['full_reduced'], t['fast']))} | "
        f"{ratio(t['fast_exact'], t['fast']).text(fmt='{:.2f}', unit='x')} | {races} |"
    )


def _split_row(r: dict) -> str:
    t, ws = r["times"], r["watershed"]
    full, fast = t["full"].median, t["fast"].median
    ws_full, ws_fast = ws["full"], ws["fast"]
    return (
        f"| {r['image']} | {r['size']} | {full:.2f} | {ws_full:.2f} ({ws_full / full:.0%}) | "
        f"{full - ws_full:.2f} | {1000 * fast:.1f} | {1000 * ws_fast:.1f} "
        f"({ws_fast / fast:.0%}) | {1000 * (fast - ws_fast):.1f} | "
        f"{ws_full / max(ws_fast, 1e-9):.1f}x | {(full - ws_full) / (fast - ws_fast):.1f}x | "
        f"{full / fast:.1f}x |"
    )


def _cpu_row(image_id: str, image: np.ndarray, mask: np.ndarray, fast: Timing, args) -> tuple:
    """segment() without the forward (prep + labels) and the classical predictor."""
    from hpa_kit.segment import ClassicalSegmenter, match_labels
    from hpa_kit.segment.networks import network_inputs

    segmenter = ClassicalSegmenter(scale=0.25)
    times = interleaved(
        {
            "prep": lambda: network_inputs(image, scale=0.25),
            "classical": lambda: segmenter.segment([image]),
        },
        args.rounds,
        number={"prep": args.number},
    )
    c = match_labels(mask, times["classical"].result[0][1])
    prep, labels = times["prep"].median, fast.median
    row = (
        f"| {image_id[:8]} | {image.shape[0]}x{image.shape[1]} | {_s(times['prep'])} | "
        f"{labels:.3f} | {prep + labels:.3f} | {_s(times['classical'])} | "
        f"{c.tp}/{c.n_true} true, {c.n_pred} predicted | {c.f1:.3f} | {c.mean_iou:.3f} |"
    )
    return row, c


def _summary(results: list[dict]) -> list[str]:
    """Per kind: cells matched, mean IoU over matched cells, range of the per-image medians."""
    lines = []
    for kind in dict.fromkeys(r["kind"] for r in results):
        rows = [r for r in results if r["kind"] == kind]
        tp = sum(r["match"].tp for r in rows)
        n = sum(r["match"].n_true for r in rows)
        iou = sum(r["match"].mean_iou * r["match"].tp for r in rows) / max(tp, 1)
        ref = [r["vs_reference"].median for r in rows]
        full = [r["vs_full"].median for r in rows]
        same = sum(r["identical"] for r in rows)
        lines.append(
            f"| {kind} | {len(rows)} | {same}/{len(rows)} | {tp}/{n} ({tp / max(n, 1):.1%}) | "
            f"{iou:.3f} | {min(ref):.0f}-{max(ref):.0f}x | {min(full):.0f}-{max(full):.0f}x |"
        )
    return lines


def _json_row(r: dict) -> dict:
    m = r["match"]
    return {
        "image": r["image"],
        "size": r["size"],
        "kind": r["kind"],
        "identical_to_reference": bool(r["identical"]),
        "cells": m.n_true,
        "matched": m.tp,
        "predicted": m.n_pred,
        "mean_iou": round(m.mean_iou, 4),
        "seconds": {name: t.as_dict() for name, t in r["times"].items()},
        "watershed_seconds": {k: round(v, 6) for k, v in r["watershed"].items()},
        "ratio_vs_reference": r["vs_reference"].as_dict(),
        "ratio_vs_label_cells_1": r["vs_full"].as_dict(),
    }


TABLES = {
    "fidelity": (
        "Quarter-scale labelling vs full scale, per map kind (seconds; median of the rounds, "
        "then the fastest and slowest round; ratios: median of the per-round ratios, then the "
        "lowest and highest; reference = the scikit-image rendering of hpacellseg's label_cell, "
        f"hpa_kit.segment._reference; cells matched one to one at IoU >= {IOU}):",
        "| image | size | maps | cells at 1.0 | label_cells 1.0 identical to reference | "
        "reference 1.0 s | label_cells 1.0 s | 0.25 + upsample ms | speed-up vs reference | "
        "vs label_cells 1.0 | matched | mean IoU |",
    ),
    "summary": (
        "Per map kind over the images (ratio ranges: lowest and highest per-image median):",
        "| maps | images | identical to reference | cells matched | mean IoU | "
        "vs reference | vs label_cells 1.0 |",
    ),
    "modes": (
        "Exact (scikit-image over the whole image) vs reduced floods at both scales, clean "
        "maps (differences in cell-label pixels; the ratios are of the default 0.25 path, "
        "reduced; interleaved rounds as above):",
        "| image | size | 1.0 exact s | 1.0 reduced s | 1.0 pixels differing | 0.25 exact ms | "
        "0.25 reduced ms | 0.25 pixels differing (full size) | vs 1.0 exact | vs 1.0 reduced | "
        "reduced speed-up at 0.25 | 0.25 differing with saturated foreground (0.25 px) |",
    ),
    "split": (
        "Where the time goes, clean maps: label_cells at 1.0 vs maps_to_labels at 0.25, split "
        "into the skimage watershed calls and the rest (medians; the rest at 0.25 includes the "
        "upsampling and the settling of single-label components):",
        "| image | size | 1.0 s | watershed s | rest s | 0.25 + upsample ms | watershed ms | "
        "rest ms | watershed ratio | rest ratio | whole ratio |",
    ),
    "cpu": (
        "Per-image CPU work of segment() without the network forward (prep = area resize, "
        "pad, normalise; labels = maps_to_labels at 0.25, clean maps), and the classical "
        "predictor (classical_maps + maps_to_labels) against the hpacellseg masks:",
        "| image | size | prep s | labels s | total s | classical s | classical matches | "
        "classical F1 | classical mean IoU |",
    ),
}


def _print_table(name: str, rows: list[str]) -> None:
    if not rows:
        return
    caption, header = TABLES[name]
    print(f"\n{caption}\n\n{header}")
    print("|" + "---|" * (header.count("|") - 1))
    print("\n".join(rows))


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", default=os.environ.get("HPA_KIT_SAMPLES"))
    parser.add_argument("--ids", nargs="*", default=None, help="sample ids (default: all)")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--number", type=int, default=10,
                        help="calls of the fast (0.25) paths per timed value")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of the map noise")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    if not args.samples:
        parser.error("give --samples or set HPA_KIT_SAMPLES")
    if args.rounds < 1 or args.number < 1:
        parser.error("--rounds and --number must be >= 1")
    return args


def main() -> None:
    args = _parse_args()
    samples = Path(args.samples)
    from hpa_kit.io import list_image_ids, read_image, read_label_image

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"numpy {np.__version__}; load average before {os.getloadavg()[0]:.1f}; "
          f"{args.rounds} rounds, fast paths x{args.number} per value")  # fmt: skip
    results, rows = [], {name: [] for name in TABLES}
    classical = {"tp": 0, "nt": 0, "np": 0}
    for image_id in args.ids or list_image_ids(samples / "images"):
        image = read_image(samples / "images", image_id)
        mask = read_label_image(samples / "masks" / f"{image_id}_predictedmask.png")
        layers = build_layers(image, mask, seed=args.seed)
        for kind in args.kinds:
            nuc, cell = kind_maps(layers, mask, kind)
            r = measure_kind(image_id, nuc, cell, kind, args)
            rows["fidelity"].append(_fidelity_row(r))
            print(rows["fidelity"][-1], file=sys.stderr, flush=True)  # progress
            if kind == "clean":
                rows["modes"].append(_modes_row(r, nuc, cell))
                rows["split"].append(_split_row(r))
                row, c = _cpu_row(image_id, image, mask, r["times"]["fast"], args)
                rows["cpu"].append(row)
                for key, value in (("tp", c.tp), ("nt", c.n_true), ("np", c.n_pred)):
                    classical[key] += value
            results.append(_without_labels(r))
    rows["summary"] = _summary(results)
    for name in TABLES:
        _print_table(name, rows[name])
    if classical["nt"]:
        f1 = 2 * classical["tp"] / (classical["nt"] + classical["np"])
        print(f"\nclassical predictor cell F1 {f1:.3f} ({classical['tp']} of {classical['nt']} "
              f"hpacellseg cells, {classical['np']} predicted)")  # fmt: skip
    print(f"load average after {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps([_json_row(r) for r in results], indent=1) + "\n")


if __name__ == "__main__":
    main()

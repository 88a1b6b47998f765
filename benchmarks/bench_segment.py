"""Segmentation: the quarter-scale labelling trick against full-scale labelling, and timings.

Maps. The networks' weights are not available here, so the full-resolution prediction maps are
built from each real sample image and its hpacellseg mask (masks/{id}_predictedmask.png, which
is hpacellseg's own output, so the cells have realistic shapes, sizes and contacts):

- cell foreground: the mask's foreground, gaussian-smoothed (sigma 6 px) and modulated by
  smooth multiplicative noise (0.75-1.0), x 255;
- cell border: the lines where two cells meet once each is grown by 4 px
  (``skimage.segmentation.expand_labels``; hpacellseg's own masks never touch, its last hole
  filling cuts every contact), widened to 12 px and smoothed, peaking near 200 (the foreground
  is lowered there as the network's is);
- nuclei foreground: the classical predictor's nuclei map of the image computed at full
  scale (logistic of the smoothed blue channel), nuclei border 0.

Fidelity and speed. ``label_cells`` runs on those maps at scale 1.0 (checked identical to
``hpa_kit.segment._reference.reference_label_cell``, a direct scikit-image rendering of
hpacellseg's label_cell, also timed as the baseline) and on the
same maps area-resized to 0.25 (what the networks produce at the project's default scale) with
``SegConfig(scale=0.25)``, upsampled to full size (``maps_to_labels``). Reported per image:
time of each, speed ratio, the share of full-scale cells matched at IoU >= 0.5 by the fast
result, and the mean IoU of matched cells.

Reduced floods. Below scale 0.5 ``label_cells`` runs its three watersheds over only the
pixels left to flood, and settles mask components seeded by a single label without a heap
(``SegConfig.exact_floods``); at 1.0 it keeps scikit-image's whole-image calls for pixel parity
with hpacellseg. To show what that asymmetry is worth, both modes run at
both scales: times, pixels that differ between the modes, and the speed ratio of the default
0.25 path against each full-scale mode. Races need equal values, so the 0.25 comparison is
repeated with the foregrounds multiplied by 1.5 and 3 and clipped at 255 (network softmax maps
saturate inside cells: plateaus of equal values).

Timings. The CPU time per image of ``segment`` without the network forward: input preparation
(``network_inputs``: area resize, reflect pad, normalise) and ``maps_to_labels`` from quarter
maps, on the 2048 and the 3072 px samples; and the classical predictor (``classical_maps`` +
``maps_to_labels``), with its cell F1 against the hpacellseg masks.

Where the time goes. During the ``label_cells`` / ``maps_to_labels`` runs the
``skimage.segmentation.watershed`` calls are clocked (a thin wrapper, one ``perf_counter`` pair
per call; three at 1.0, up to three at 0.25, where reduced floods settle single-label
components without one): the split shows which part bounds the ratio of the whole, since a
sum of parts never scales better than its best-scaling part, and the watersheds at 1.0 must
stay scikit-image's own whole-image calls for label_cells to equal the reference.

    HPA_KIT_SAMPLES=../shared/data/hpa-samples .venv/bin/python benchmarks/bench_segment.py
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np


def _touching_lines(labels: np.ndarray) -> np.ndarray:
    out = np.zeros(labels.shape, bool)
    for a, b, sa, sb in (
        (labels[1:], labels[:-1], np.s_[1:], np.s_[:-1]),
        (labels[:, 1:], labels[:, :-1], np.s_[:, 1:], np.s_[:, :-1]),
    ):
        diff = (a != b) & (a > 0) & (b > 0)
        out[sa] |= diff
        out[sb] |= diff
    return out


def build_maps(image: np.ndarray, mask: np.ndarray, seed: int = 0):
    """Full-resolution (nuclei_maps, cell_maps) from an image and its cell mask (see above)."""
    import cv2
    from scipy import ndimage as ndi
    from skimage.segmentation import expand_labels

    from hpa_kit.segment import classical_maps

    rng = np.random.default_rng(seed)
    shape = mask.shape
    noise = cv2.resize(rng.random((shape[0] // 64 + 1, shape[1] // 64 + 1)).astype(np.float32),
                       shape[::-1], interpolation=cv2.INTER_CUBIC)  # fmt: skip
    noise = 0.75 + 0.25 * np.clip(noise, 0, 1)
    foreground = cv2.GaussianBlur((mask > 0).astype(np.float32), (0, 0), 6) * noise
    lines = ndi.binary_dilation(_touching_lines(expand_labels(mask, 4)), iterations=6)
    border = cv2.GaussianBlur(lines.astype(np.float32), (0, 0), 3)
    cell_maps = np.zeros((*shape, 3), np.uint8)
    cell_maps[..., 2] = np.clip(255 * foreground * (1 - 0.8 * border), 0, 255).astype(np.uint8)
    cell_maps[..., 1] = np.clip(200 * border, 0, 255).astype(np.uint8)
    nuclei_maps, _ = classical_maps(image, scale=1.0)
    nuclei_maps[..., 1] = 0
    return nuclei_maps, cell_maps


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", default=os.environ.get("HPA_KIT_SAMPLES"))
    parser.add_argument("--ids", nargs="*", default=None, help="sample ids (default: all)")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (best of)")
    parser.add_argument("--full-repeats", type=int, default=1, help="repeats of the slow run")
    args = parser.parse_args()
    if not args.samples:
        parser.error("give --samples or set HPA_KIT_SAMPLES")
    samples = Path(args.samples)

    from hpa_kit.io import list_image_ids, read_image, read_label_image
    from hpa_kit.segment import (
        ClassicalSegmenter,
        SegConfig,
        label_cells,
        maps_to_labels,
        match_labels,
        reduced_shape,
    )
    from hpa_kit.segment._reference import reference_label_cell
    from hpa_kit.segment.networks import network_inputs

    ids = args.ids or list_image_ids(samples / "images")
    full_cfg, quarter_cfg = SegConfig(scale=1.0), SegConfig(scale=0.25)
    full_reduced_cfg = dataclasses.replace(full_cfg, exact_floods=False)
    quarter_exact_cfg = dataclasses.replace(quarter_cfg, exact_floods=True)

    def best(repeats, fn, *fn_args, **fn_kwargs):
        """Best wall time of ``repeats`` calls, and the result."""
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            result = fn(*fn_args, **fn_kwargs)
            times.append(time.perf_counter() - t0)
        return min(times), result

    def best_split(repeats, fn, *fn_args, **fn_kwargs):
        """Like ``best``, plus the watershed seconds of the best call."""
        runs = []
        with _clocked_watershed() as spent:
            for _ in range(repeats):
                spent[0] = 0.0
                t0 = time.perf_counter()
                result = fn(*fn_args, **fn_kwargs)
                runs.append((time.perf_counter() - t0, spent[0]))
        t, ws = min(runs)
        return t, result, ws

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"numpy {np.__version__}; load average before {os.getloadavg()[0]:.1f}")  # fmt: skip
    rows_fidelity, rows_time, rows_split, rows_modes = [], [], [], []
    totals = {"matched": 0, "cells": 0, "ious": [], "tp": 0, "nt": 0, "np": 0}
    ratios_ref, ratios_full = [], []
    for image_id in ids:
        image = read_image(samples / "images", image_id)
        mask = read_label_image(samples / "masks" / f"{image_id}_predictedmask.png")
        shape = image.shape[:2]
        nuc_full, cell_full = build_maps(image, mask)
        t_ref, (ref_nuclei, ref_cells) = best(
            args.full_repeats, reference_label_cell, nuc_full, cell_full
        )
        t_full, (nuclei_full, cells_full), ws_full = best_split(
            args.full_repeats, label_cells, nuc_full, cell_full, full_cfg
        )
        identical = np.array_equal(ref_cells, cells_full) and np.array_equal(
            ref_nuclei, nuclei_full
        )
        small = reduced_shape(shape, 0.25)
        nuc_q, cell_q = _area_resize(nuc_full, small), _area_resize(cell_full, small)
        t_fast, (_, cells_fast), ws_fast = best_split(
            args.repeats, maps_to_labels, nuc_q, cell_q, shape=shape, config=quarter_cfg
        )
        m = match_labels(cells_full, cells_fast)
        t_full_red, (_, cells_full_red) = best(
            args.full_repeats, label_cells, nuc_full, cell_full, full_reduced_cfg
        )
        t_fast_exact, (_, cells_fast_exact) = best(
            args.repeats, maps_to_labels, nuc_q, cell_q, shape=shape, config=quarter_exact_cfg
        )
        m_red = match_labels(cells_full, cells_full_red)
        plateaus = []
        for gain in (1.5, 3.0):
            nuc_s, cell_s = nuc_q.copy(), cell_q.copy()
            for maps in (nuc_s, cell_s):
                maps[..., 2] = np.clip(maps[..., 2] * gain, 0, 255).astype(np.uint8)
            exact = label_cells(nuc_s, cell_s, quarter_exact_cfg)[1]
            reduced = label_cells(nuc_s, cell_s, quarter_cfg)[1]
            plateaus.append(
                f"x{gain:g}: {int((exact != reduced).sum())} of {int((exact > 0).sum())} px "
                f"({(cell_s[..., 2] == 255).mean():.0%} at 255)"
            )
        rows_modes.append(
            f"| {image_id[:8]} | {shape[0]}x{shape[1]} | {t_full:.2f} | {t_full_red:.2f} | "
            f"{int((cells_full_red != cells_full).sum())} ({m_red.tp}/{m_red.n_true} cells, "
            f"IoU {m_red.mean_iou:.4f}) | {1000 * t_fast_exact:.1f} | {1000 * t_fast:.1f} | "
            f"{int((cells_fast != cells_fast_exact).sum())} | {t_full / t_fast:.1f}x | "
            f"{t_full_red / t_fast:.1f}x | {t_fast_exact / t_fast:.2f}x | {'; '.join(plateaus)} |"
        )
        t_prep, _ = best(args.repeats, network_inputs, image, scale=0.25)
        segmenter = ClassicalSegmenter(scale=0.25)
        t_classical, ((_, cells_classical),) = best(args.repeats, segmenter.segment, [image])
        c = match_labels(mask, cells_classical)
        totals["matched"] += m.tp
        totals["cells"] += m.n_true
        totals["ious"].append(m.mean_iou)
        totals["tp"] += c.tp
        totals["nt"] += c.n_true
        totals["np"] += c.n_pred
        ratios_ref.append(t_ref / t_fast)
        ratios_full.append(t_full / t_fast)
        name = f"{image_id[:8]} | {shape[0]}x{shape[1]}"
        rows_fidelity.append(
            f"| {name} | {m.n_true} | {t_ref:.2f} | {t_full:.2f} | {'yes' if identical else 'NO'} "
            f"| {t_fast:.3f} | {t_ref / t_fast:.0f}x | {t_full / t_fast:.0f}x | "
            f"{m.tp}/{m.n_true} ({m.recall:.0%}), precision {m.precision:.0%} | {m.mean_iou:.3f} |"
        )
        rows_time.append(
            f"| {name} | {t_prep:.3f} | {t_fast:.3f} | {t_prep + t_fast:.3f} | {t_classical:.2f} "
            f"| {c.tp}/{c.n_true} true, {c.n_pred} predicted | {c.f1:.3f} | {c.mean_iou:.3f} |"
        )
        rows_split.append(
            f"| {name} | {t_full:.2f} | {ws_full:.2f} ({ws_full / t_full:.0%}) | "
            f"{t_full - ws_full:.2f} | {1000 * t_fast:.1f} | {1000 * ws_fast:.1f} "
            f"({ws_fast / t_fast:.0%}) | {1000 * (t_fast - ws_fast):.1f} | "
            f"{ws_full / ws_fast:.1f}x | {(t_full - ws_full) / (t_fast - ws_fast):.1f}x | "
            f"{t_full / t_fast:.1f}x |"
        )
        print(rows_fidelity[-1], flush=True)

    print()
    print("Quarter-scale labelling vs full scale (wall seconds; reference = the scikit-image "
          "rendering of hpacellseg's label_cell, hpa_kit.segment._reference):")  # fmt: skip
    print()
    print("| image | size | cells at 1.0 | reference 1.0 s | label_cells 1.0 s | identical | "
          "0.25 + upsample s | speed-up vs reference | vs label_cells 1.0 | matched IoU>=0.5 "
          "| mean IoU |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows_fidelity))
    print()
    print("Per-image CPU work of segment() without the network forward (prep = area resize, "
          "pad, normalise; labels = maps_to_labels at 0.25), and the classical predictor "
          "(classical_maps + maps_to_labels) against the hpacellseg masks:")  # fmt: skip
    print()
    print("| image | size | prep s | labels s | total s | classical s | classical matches | "
          "classical F1 | classical mean IoU |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows_time))
    print()
    print("Where the time goes: label_cells at 1.0 vs maps_to_labels at 0.25, split into "
          "the skimage watershed calls and the rest (the rest at 0.25 includes the upsampling "
          "and the settling of single-label components):")  # fmt: skip
    print()
    print("| image | size | 1.0 s | watershed s | rest s | 0.25 + upsample ms | watershed ms | "
          "rest ms | watershed ratio | rest ratio | whole ratio |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows_split))
    print()
    print("Exact (scikit-image over the whole image) vs reduced floods at both scales "
          "(differences in cell-label pixels; the ratios are of the default 0.25 path, reduced):")  # fmt: skip
    print()
    print("| image | size | 1.0 exact s | 1.0 reduced s | 1.0 pixels differing | "
          "0.25 exact ms | 0.25 reduced ms | 0.25 pixels differing (full size) | "
          "vs 1.0 exact | vs 1.0 reduced | reduced speed-up at 0.25 | "
          "0.25 differing with saturated foreground (0.25 px) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows_modes))
    f1 = 2 * totals["tp"] / (totals["nt"] + totals["np"])
    print()
    print(f"all: {totals['matched']}/{totals['cells']} full-scale cells matched "
          f"({totals['matched'] / totals['cells']:.1%}), mean matched IoU "
          f"{np.mean(totals['ious']):.3f}; speed-up {min(ratios_ref):.0f}x-{max(ratios_ref):.0f}x "
          f"vs the reference, {min(ratios_full):.0f}x-{max(ratios_full):.0f}x vs label_cells at "
          f"1.0; classical predictor cell F1 {f1:.3f} ({totals['tp']} of {totals['nt']} "
          f"hpacellseg cells, {totals['np']} predicted)")  # fmt: skip
    print(f"load average after {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

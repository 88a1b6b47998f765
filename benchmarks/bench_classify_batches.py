"""Classifier batches on a GPU: what a new batch size costs, and padding to powers of two.

``predict_folder`` classifies each image's cells in one ``classify_crops`` call, so the batch
sizes the model sees follow the images' cell counts. Each mode runs in a fresh process (its own
CUDA context): one forward at another input size starts the libraries, then the same sequence
of cell counts runs twice, every call timed (with ``torch.cuda.synchronize``). Reported per
mode: seconds of the first pass (every new batch shape met for the first time), of the second
(warm) pass, cells per second of each, and the distinct batch sizes the model saw. Modes:
``exact`` (``pad_batches=False``) and ``pow2`` (``pad_batches=True``: batches padded with black
crops to the next power of two, at most ``--batch-size``; the default on CUDA).

The modes' processes run in interleaved rounds (``benchmarks/_timing.py``: exact then pow2,
then pow2 then exact, ...), ``--rounds`` of them; figures are the median over the rounds, then
the fastest and slowest round, and each ratio is the median of the per-round ratios, then the
lowest and highest.

    python benchmarks/bench_classify_batches.py --device cuda --rounds 3
    .venv/bin/python benchmarks/bench_classify_batches.py --device cpu --images 6 --size 64  # smoke test
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from _timing import Spread, ratio, round_orders

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODES = ("exact", "pow2")


def _child(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    from hpa_kit.model import ClassifierConfig, build_classifier
    from hpa_kit.predict import classify_crops

    device = torch.device(args.device)
    torch.manual_seed(0)
    config = ClassifierConfig(arch=args.arch, input_size=args.size)
    model = build_classifier(config.arch, config.in_chans, config.num_classes).eval().to(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    seen: set[int] = set()
    model.register_forward_pre_hook(lambda _module, inputs: seen.add(inputs[0].shape[0]))
    t0 = time.perf_counter()
    with torch.inference_mode(), torch.autocast(device.type, enabled=device.type == "cuda"):
        model(torch.zeros(1, config.in_chans, 64, 64, device=device))  # start the libraries
    sync()
    start_s = time.perf_counter() - t0
    seen.clear()

    rng = np.random.default_rng(args.seed)
    counts = rng.integers(args.min_cells, args.max_cells + 1, args.images).tolist()
    crops = rng.integers(0, 256, (max(counts), args.size, args.size, 4), dtype=np.uint8)
    passes = []
    for _ in range(2):
        calls = []
        for n in counts:
            t0 = time.perf_counter()
            classify_crops(crops[:n], model, config, tta=args.tta, batch_size=args.batch_size,
                           pad_batches=args.mode == "pow2")  # fmt: skip
            sync()
            calls.append(time.perf_counter() - t0)
        passes.append(calls)
    return {
        "mode": args.mode,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "start_s": start_s,
        "cells": int(sum(counts)),
        "images": len(counts),
        "pass_s": [sum(calls) for calls in passes],
        "slowest_call_s": [max(calls) for calls in passes],
        "batch_sizes": sorted(seen),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--arch", default="efficientnet_b0")
    parser.add_argument("--size", type=int, default=256, help="crop size (input_size)")
    parser.add_argument("--tta", default="seed")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--images", type=int, default=40, help="calls per pass, one per image")
    parser.add_argument("--min-cells", type=int, default=3)
    parser.add_argument("--max-cells", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds of the modes")
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)  # child process
    args = parser.parse_args()

    if args.mode:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        print(json.dumps(_child(args)))
        return

    runs = _run_rounds(args)
    if not all(runs.values()):
        sys.exit(1)
    _report(args, runs)


def _run_rounds(args: argparse.Namespace) -> dict[str, list[dict]]:
    """Each mode in a fresh process, ``--rounds`` times, the order rotating every round."""
    runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
    passed = [arg for arg in sys.argv[1:] if arg != "--mode"]
    for order in round_orders(MODES, args.rounds):
        for mode in order:
            cmd = [sys.executable, __file__, "--mode", mode, *passed]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                print(f"{mode}: failed ({done.returncode})\n{done.stderr[-3000:]}", flush=True)
                return {mode: [] for mode in MODES}
            runs[mode].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"{mode}: {runs[mode][-1]}", flush=True)
    return runs


def _report(args: argparse.Namespace, runs: dict[str, list[dict]]) -> None:
    first = runs[MODES[0]][0]
    print()
    print(f"{first['device']}, {args.arch} at {args.size} px, tta {args.tta}, batch size "
          f"{args.batch_size}, {first['images']} calls of {args.min_cells}-{args.max_cells} "
          f"crops ({first['cells']} cells) per pass, {args.rounds} rounds:")  # fmt: skip
    print()
    print("| mode | library start s | pass 1 s | pass 1 cells/s | slowest call pass 1 s | "
          "pass 2 s | pass 2 cells/s | batch sizes seen |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    passes = {}
    for mode, rows in runs.items():
        start = Spread(tuple(r["start_s"] for r in rows))
        p1, p2 = (Spread(tuple(r["pass_s"][k] for r in rows)) for k in (0, 1))
        slowest = Spread(tuple(r["slowest_call_s"][0] for r in rows))
        passes[mode] = (p1, p2)
        sizes = rows[0]["batch_sizes"]
        print(f"| {mode} | {start.text(fmt='{:.2f}', unit='')} | {p1.text(fmt='{:.2f}', unit='')} "
              f"| {first['cells'] / p1.median:.0f} | {slowest.text(fmt='{:.2f}', unit='')} | "
              f"{p2.text(fmt='{:.2f}', unit='')} | {first['cells'] / p2.median:.0f} | "
              f"{len(sizes)}: {sizes} |")  # fmt: skip
    (e1, e2), (p1, p2) = passes["exact"], passes["pow2"]
    x = {"fmt": "{:.2f}", "unit": "x"}
    print()
    print(f"exact / pow2: pass 1 {ratio(e1, p1).text(**x)}, pass 2 {ratio(e2, p2).text(**x)}")


if __name__ == "__main__":
    main()

"""The demo's scores over seeds and CPU kernel sets: how far its figures move, and its claim.

Usage (from the repository root):

    .venv/bin/python benchmarks/bench_demo_variants.py --out demo-variants --jobs 2
    .venv/bin/python benchmarks/bench_demo_variants.py --out demo-variants --no-run   # table only

Runs ``hpa-kit demo --seed S --no-progress`` into ``OUT/{kernels}-seed{S}/`` once per seed
(``--seeds``, default 0 1 2) and per CPU kernel set (``--kernels``, default every set this CPU
offers: ``default``, ``avx2``, and ``avx512`` where present), each in a fresh process with
``ATEN_CPU_CAPABILITY`` set: torch picks its CPU kernels at start-up, and their float rounding
moves training. Arguments after ``--`` go to every demo run (e.g. ``-- --n-test 48``). ``--jobs``
runs that many demos at once (each uses one torch thread; the seconds then include the
contention, the scores do not depend on it).

Prints one row per variant (mAP of the per-cell submission, of the two baselines, the gain over
the better baseline, total seconds, the kernel set torch reports) and the range of each column,
as text and as a Markdown table. Exits 1 when a run failed, or when a gain is below
``--min-gain`` (default 0.05: the demo's claim).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

COLUMNS = ("map", "baseline_map", "baseline_cell_mean_map", "gain")


def native_kernels() -> list[str]:
    """The ``ATEN_CPU_CAPABILITY`` values this CPU offers, from torch's own choice."""
    code = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
    native = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    order = ["default", "avx2", "avx512"]
    if native.lower() not in order:
        return ["default", native.lower()]
    return order[: order.index(native.lower()) + 1]


def run_variant(out: Path, kernels: str, seed: int, demo_args: list[str]) -> tuple[str, int]:
    """One demo run in its own process; returns (folder name, exit status)."""
    name = f"{kernels}-seed{seed}"
    folder = out / name
    env = {**os.environ, "ATEN_CPU_CAPABILITY": kernels}
    command = [sys.executable, "-m", "hpa_kit", "demo", "--out", str(folder), "--seed", str(seed)]
    command += ["--no-progress", *demo_args]
    out.mkdir(parents=True, exist_ok=True)
    with (out / f"{name}.log").open("w") as log:
        code = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    print(f"[variants] {name}: exit {code}", flush=True)
    return name, code


def read_row(out: Path, kernels: str, seed: int) -> dict[str, object] | None:
    path = out / f"{kernels}-seed{seed}" / "summary.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    return {
        "kernels": kernels,
        "seed": seed,
        "map": summary["map"],
        "baseline_map": summary["baseline_map"],
        "baseline_cell_mean_map": summary["baseline_cell_mean_map"],
        "gain": summary["gain"],
        "seconds": summary["seconds"]["total"],
        "reported": summary.get("torch", {}).get("cpu_capability", "?"),
        "test_images": summary["counts"]["test_images"],
        "test_cells": summary["counts"]["test_cells_true"],
    }


def table(rows: list[dict[str, object]]) -> str:
    head = "| kernels (torch reports) | seed | mAP | baseline | cell-mean baseline | gain | s |"
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['kernels']} ({r['reported']}) | {r['seed']} | {r['map']:.4f} | "
            f"{r['baseline_map']:.4f} | {r['baseline_cell_mean_map']:.4f} | {r['gain']:+.4f} | "
            f"{r['seconds']:.0f} |"
        )
    low = {c: min(float(r[c]) for r in rows) for c in (*COLUMNS, "seconds")}
    high = {c: max(float(r[c]) for r in rows) for c in (*COLUMNS, "seconds")}
    lines.append(
        f"| **range** | | {low['map']:.4f}-{high['map']:.4f} | "
        f"{low['baseline_map']:.4f}-{high['baseline_map']:.4f} | "
        f"{low['baseline_cell_mean_map']:.4f}-{high['baseline_cell_mean_map']:.4f} | "
        f"{low['gain']:+.4f} to {high['gain']:+.4f} | {low['seconds']:.0f}-{high['seconds']:.0f} |"
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder of the demo runs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--kernels", nargs="+", default=None, help="default: all on this CPU")
    parser.add_argument("--jobs", type=int, default=1, help="demos run at once (default 1)")
    parser.add_argument("--min-gain", type=float, default=0.05)
    parser.add_argument("--no-run", action="store_true", help="only tabulate finished runs")
    args, demo_args = parser.parse_known_args()
    demo_args = [a for a in demo_args if a != "--"]
    kernels = args.kernels or native_kernels()
    variants = [(k, s) for k in kernels for s in args.seeds]
    failed: list[str] = []
    if not args.no_run:
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            jobs = [pool.submit(run_variant, args.out, k, s, demo_args) for k, s in variants]
            failed = [name for name, code in (j.result() for j in jobs) if code != 0]
    rows = [row for k, s in variants if (row := read_row(args.out, k, s)) is not None]
    missing = len(variants) - len(rows)
    if rows:
        print(f"\ndemo variants ({rows[0]['test_images']} test images; demo args: {demo_args})")
        print(table(rows))
    low = [r for r in rows if float(r["gain"]) < args.min_gain]
    for name in failed:
        print(f"FAILED: {name} (see {args.out / name}.log)")
    if missing:
        print(f"{missing} variant(s) without a summary.json")
    for r in low:
        print(f"gain below {args.min_gain}: {r['kernels']} seed {r['seed']}: {r['gain']:+.4f}")
    return 1 if failed or missing or low else 0


if __name__ == "__main__":
    sys.exit(main())

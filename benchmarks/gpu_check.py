"""One prepared run that checks hpa_kit's CUDA code paths and measures GPU figures.

Sections (each check prints one PASS / FAIL / SKIP line; a failing check records its cause and
the run goes on; results go to ``--json`` after every check):

0. env: torch / CUDA / GPU first; hpa_kit's modules import without albumentations, pycocotools
   and iterative-stratification (all three are imported lazily, inside the functions that need
   them); which of them are importable here (training needs albumentations; synthetic data,
   mask encoding and so predict_folder need pycocotools).
1. seg: cost-faithful *stand-ins* for hpacellseg's networks (``hpa_kit.segment.standin``:
   DPN-92 U-Nets with hpacellseg's widths, 139 M parameters and 579 GFLOPs per 3x512x512
   forward each, random weights plus a brightness prior so that the maps show real cells),
   written whole by ``write_standin_weights`` (the nuclei one inside ``nn.DataParallel``, as
   hpacellseg's files are) and loaded by ``load_segmentation_models``. ``predict_maps`` on the
   device (float16 autocast on CUDA) against the CPU for the same images; time per 2048 px
   image at batch sizes 1-8 (``seg_batches``): ``predict_maps`` as the pipeline runs it, and
   the forward passes of both networks in float16 autocast, float32 with TF32 and strict
   float32, with the TFLOPS reached (the stand-ins cost what hpacellseg's networks cost; their
   maps say nothing about its accuracy); ``segment()`` through a ``NetworkSegmenter`` on the
   device (label shapes, cells found, F1 against the synthetic truth, against the labels from
   CPU maps). A batch size that runs out of GPU memory is reported as such.
2. cls: a timm efficientnet_b0 (``pretrained=False``, BatchNorm statistics calibrated on the
   crops, head scaled down so the probabilities are not saturated) written with
   ``save_checkpoint`` and read back with ``load_classifier`` on both devices;
   ``classify_crops`` on the same cell crops with TTA "none" and "seed": device (autocast
   float16) against CPU, float16 against float32 on the device (``amp=False``), float32
   device against CPU; throughput in cells/s at crop sizes 256, 384, 512.
3. train: ``hpa_kit.train.fit`` for a few steps on a tiny synthetic set (``write_dataset``,
   a ``fold`` column so no iterative-stratification is needed) with AMP + GradScaler on
   CUDA; the loss is finite, ``best/`` and ``last/train_state.pt`` are written (GradScaler
   state inside), the checkpoint loads on the CPU and predicts as on the device.
4. predict: ``predict_folder`` on a synthetic test folder with the stand-in network segmenter
   and the section-3 checkpoint on the device, worker processes, TTA "seed", a resume file:
   it completes, the submission validates, seconds per image; a second run resumes every
   image and writes the same file.

On the device machine (wheels for albumentations + pycocotools in .whl/, see the report):

    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --json $OUT/gpu_check.json

Here, on the CPU, a reduced run (comparisons that need CUDA print SKIP(cuda-only); the
segmentation stand-ins keep their full architecture and weights, on 256 px images, i.e.
64x64 network inputs):

    .venv/bin/python benchmarks/gpu_check.py --device cpu --quick --json /tmp/gpu_check.json

Exit status 0 when no check failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # hpa_kit from this checkout (not installed on the device)
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

OPTIONAL = ("albumentations", "pycocotools", "iterstrat")
SECTIONS = ("env", "seg", "cls", "train", "predict")


# --------------------------------------------------------------------------- settings


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Every size of the run; ``quick()`` is the CPU test's."""

    seg_image: int = 2048  # synthetic image side for the segmentation checks
    seg_batch: int = 4
    seg_batches: tuple[int, ...] = (1, 2, 4, 8)  # batch sizes timed (seg time per image)
    seg_time_images: int = 8
    cls_image: int = 1024  # synthetic image the cell crops are cut from
    cls_compare_size: int = 256
    cls_compare_images: int = 2
    cls_sizes: tuple[int, ...] = (256, 384, 512)
    cls_batch: int = 64
    cls_items: int = 256  # crops per timed call
    min_seconds: float = 1.5  # each timing runs at least this long (after a warm-up)
    train_images: int = 48
    train_image_size: int = 512
    train_input: int = 256
    train_batch: int = 8
    train_epochs: int = 2
    train_workers: int = 4
    predict_images: int = 8
    predict_image_size: int = 2048
    predict_workers: int = 8
    predict_batch: int = 64

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            seg_image=256,
            seg_batch=2,
            seg_batches=(1,),
            seg_time_images=1,
            cls_image=256,
            cls_compare_size=64,
            cls_compare_images=1,
            cls_sizes=(64, 96),
            cls_batch=16,
            cls_items=16,
            min_seconds=0.2,
            train_images=8,
            train_image_size=128,
            train_input=64,
            train_batch=4,
            train_epochs=1,
            train_workers=0,
            predict_images=2,
            predict_image_size=256,
            predict_workers=2,
            predict_batch=16,
        )


def _override(sizes: Sizes, items: list[str], parser: argparse.ArgumentParser) -> Sizes:
    """``sizes`` with ``FIELD=VALUE`` overrides (ints, floats, comma-separated int tuples)."""
    fields = {f.name: f for f in dataclasses.fields(Sizes)}
    changes: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in fields:
            parser.error(f"--set {item!r}: expected FIELD=VALUE with FIELD in {sorted(fields)}")
        current = getattr(sizes, name)
        try:
            if isinstance(current, tuple):
                changes[name] = tuple(int(v) for v in value.split(",") if v)
            else:
                changes[name] = type(current)(value)
        except ValueError:
            parser.error(f"--set {item!r}: {value!r} is not a {type(current).__name__}")
    return dataclasses.replace(sizes, **changes)


# Tolerances of the comparisons (probabilities in [0, 1]; maps in grey levels 0..255).
TOL_PROB_AMP = 0.02  # device float16 autocast against CPU float32
TOL_PROB_FP32 = 0.01  # device float32 (TF32 convolutions allowed) against CPU float32
TOL_MAP_SHARE = 0.01  # share of map pixels differing by more than 2 grey levels


class Skip(Exception):
    """A check that cannot or need not run here; the message says why."""


def _cause(exc: BaseException) -> str:
    text = str(exc).strip().replace("\n", " ")
    if len(text) > 400:
        text = text[:400] + "..."
    where = ""
    tb = traceback.extract_tb(exc.__traceback__)
    if tb:
        frame = tb[-1]
        where = f" (at {Path(frame.filename).name}:{frame.lineno} in {frame.name})"
    return f"{type(exc).__name__}: {text}{where}" if text else f"{type(exc).__name__}{where}"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value == 0 or 1e-3 <= abs(value) < 1e5:
            return f"{value:.4g}"
        return f"{value:.3e}"
    return str(value)


class Results:
    """The checks so far; written to ``json_path`` after each one."""

    def __init__(self, json_path: str | None, args: argparse.Namespace) -> None:
        self.json_path = Path(json_path) if json_path else None
        self.started = time.perf_counter()
        self.data: dict[str, Any] = {
            "args": vars(args),
            "env": {},
            "checks": [],
            "summary": {},
        }

    def record(self, section: str, name: str, status: str, detail: str, metrics: dict) -> None:
        entry = {
            "section": section,
            "name": name,
            "status": status,
            "detail": detail,
            "metrics": metrics,
        }
        self.data["checks"].append(entry)
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in metrics.items() if not isinstance(v, dict))
        line = f"[{status}] {section}/{name}"
        if detail:
            line += f": {detail}"
        if shown:
            line += f"  ({shown})"
        print(line, flush=True)
        self.write()

    def run(self, section: str, name: str, fn: Callable[[], Any]) -> Any:
        """Run one check. ``fn`` returns ``(ok, detail, metrics)`` (or ``(ok, detail, metrics,
        value)`` to hand ``value`` back to the caller); raising :class:`Skip` skips it, any
        other exception fails it with its cause. Returns ``value`` (or None)."""
        t0 = time.perf_counter()
        value = None
        try:
            out = fn()
            ok, detail, metrics = out[:3]
            value = out[3] if len(out) > 3 else None
            status = "PASS" if ok else "FAIL"
        except Skip as exc:
            status, detail, metrics = "SKIP", str(exc), {}
        except Exception as exc:  # recorded, the run goes on
            status, detail, metrics = "FAIL", _cause(exc), {}
            traceback.print_exc(limit=4)
        metrics = dict(metrics)
        metrics["check_s"] = round(time.perf_counter() - t0, 2)
        self.record(section, name, status, detail, metrics)
        return value

    def summary(self) -> dict[str, Any]:
        counts = {"PASS": 0, "FAIL": 0, "SKIP": 0}
        for check in self.data["checks"]:
            counts[check["status"]] += 1
        self.data["summary"] = {
            **counts,
            "failed": [
                f"{c['section']}/{c['name']}: {c['detail']}"
                for c in self.data["checks"]
                if c["status"] == "FAIL"
            ],
            "wall_s": round(time.perf_counter() - self.started, 1),
        }
        self.write()
        return self.data["summary"]

    def write(self) -> None:
        """The results so far to ``json_path`` (atomically: a reader never sees half a file)."""
        if self.json_path is None:
            return
        from hpa_kit.outputs import atomic_write_text

        atomic_write_text(self.json_path, json.dumps(self.data, indent=2, default=str) + "\n")


# --------------------------------------------------------------------------- helpers


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _rate(fn: Callable[[], Any], items: int, min_seconds: float, device: str) -> dict[str, float]:
    """Items per second of ``fn`` (one warm-up call, then calls until ``min_seconds``)."""
    fn()
    _sync(device)
    calls = 0
    t0 = time.perf_counter()
    while True:
        fn()
        _sync(device)
        calls += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            break
    return {
        "per_s": items * calls / elapsed,
        "s_per_item": elapsed / (items * calls),
        "calls": calls,
    }


def _peak_mib(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats()


def _needs(state: dict, *keys: str) -> None:
    missing = [k for k in keys if state.get(k) is None]
    if missing:
        raise Skip(f"needs {', '.join(missing)} from an earlier check that did not pass")


def _require(module: str, why: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise Skip(f"missing package {module} ({why}); carry its wheel (see the report)")


def _write_synth(folder: Path, *, n: int, size: int, seed: int, cells: tuple[int, int]):
    """A synthetic dataset in ``folder`` (``write_dataset``, ids ``{folder.name}_00000``...)."""
    _require("pycocotools", "write_dataset encodes the truth masks")
    from hpa_kit.synth import SynthConfig, write_dataset

    return write_dataset(
        folder,
        n=n,
        size=size,
        seed=seed,
        config=SynthConfig(cells=cells),
        id_prefix=folder.name,
        progress=False,
    )


def _compare_probs(a, b) -> dict[str, float]:
    import numpy as np

    diff = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    return {"max_abs": float(diff.max()), "mean_abs": float(diff.mean())}


#: Forward precisions timed on CUDA: float16 autocast (what predict_maps runs there), float32
#: with TF32 convolutions allowed (torch's default for cuDNN), strict float32 (TF32 off, as on
#: GPUs without TF32). The CPU runs float32 only.
SEG_MODES = ("fp16", "tf32", "fp32")


def _precision(mode: str, device: str):
    """A context manager that runs the forward passes at ``mode`` (see :data:`SEG_MODES`)."""
    import contextlib

    import torch

    stack = contextlib.ExitStack()
    if not device.startswith("cuda"):
        return stack
    if mode == "fp16":
        stack.enter_context(torch.autocast("cuda", dtype=torch.float16))
        return stack
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)

    def restore() -> None:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved

    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
    stack.callback(restore)
    return stack


def _seg_rates(models, images, batch: int, sizes: Sizes, device: str) -> dict[str, Any]:
    """Per 2048 px image at one batch size: ``predict_maps`` (CPU input preparation included)
    and the forward passes of both networks at each precision, with the FLOP rate reached."""
    import numpy as np
    import torch

    from hpa_kit.segment import predict_maps
    from hpa_kit.segment.networks import network_inputs
    from hpa_kit.segment.standin import standin_cost

    nuclei, cell = models
    n_in, c_in, _ = network_inputs(images[0], scale=0.25)
    flops = 2 * standin_cost(rows=n_in.shape[1], cols=n_in.shape[2]).flops  # both networks
    row: dict[str, Any] = {"input": f"{batch}x3x{n_in.shape[1]}x{n_in.shape[2]}"}
    _reset_peak(device)
    try:
        whole = _rate(
            lambda: predict_maps(images, nuclei, cell, scale=0.25, batch_size=batch, device=device),
            len(images),
            sizes.min_seconds,
            device,
        )
        row["predict_maps_ms"] = round(whole["s_per_item"] * 1e3, 2)
        batch_n = torch.from_numpy(np.stack([n_in] * batch)).to(device)
        batch_c = torch.from_numpy(np.stack([c_in] * batch)).to(device)
        for mode in SEG_MODES if device.startswith("cuda") else ("fp32",):

            def forward(mode=mode):
                with torch.inference_mode(), _precision(mode, device):
                    nuclei(batch_n)
                    cell(batch_c)

            rate = _rate(forward, batch, sizes.min_seconds, device)
            row[f"forward_{mode}_ms"] = round(rate["s_per_item"] * 1e3, 2)
            row[f"forward_{mode}_tflops"] = round(flops / rate["s_per_item"] / 1e12, 4)
    except torch.cuda.OutOfMemoryError:
        row["error"] = "out of memory"
        torch.cuda.empty_cache()
    row["peak_mib"] = _peak_mib(device)
    return row


def _seg_line(row: dict[str, Any]) -> str:
    parts = []
    if "predict_maps_ms" in row:
        parts.append(f"predict_maps {row['predict_maps_ms']:.1f}")
    for mode in SEG_MODES:
        if f"forward_{mode}_ms" in row:
            ms, tflops = row[f"forward_{mode}_ms"], row[f"forward_{mode}_tflops"]
            parts.append(f"forward {mode} {ms:.1f} ({tflops:.3g} TFLOPS)")
    if "error" in row:
        parts.append(row["error"])
    return ", ".join(parts)


def _maps_diff(a, b) -> dict[str, float]:
    import numpy as np

    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    per_pixel = diff.max(axis=-1)
    return {
        "max_abs": int(diff.max()),
        "share_gt2": float((per_pixel > 2).mean()),
        "share_ne": float((per_pixel > 0).mean()),
    }


# --------------------------------------------------------------------------- section 0


_IMPORT_PROBE = r"""
import importlib, importlib.abc, sys
BLOCKED = {"albumentations", "albucore", "pycocotools", "iterstrat"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("blocked " + name)
sys.meta_path.insert(0, Block())
mods = ["hpa_kit.segment", "hpa_kit.segment.networks", "hpa_kit.model", "hpa_kit.tta",
        "hpa_kit.crop", "hpa_kit.predict", "hpa_kit.dataset", "hpa_kit.augment",
        "hpa_kit.train", "hpa_kit.synth", "hpa_kit.rle", "hpa_kit.submission",
        "hpa_kit.folds", "hpa_kit.metric"]
bad = []
for m in mods:
    try:
        importlib.import_module(m)
    except Exception as exc:
        bad.append(m + ": " + repr(exc))
print("IMPORT-PROBE", len(mods), "|".join(bad))
"""


def section_env(results: Results, args: argparse.Namespace, state: dict) -> None:
    def versions():
        import importlib.metadata as md

        import numpy as np
        import torch

        env: dict[str, Any] = {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "torch_cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version()
            if torch.backends.cudnn.is_available()
            else None,
            "cuda_available": torch.cuda.is_available(),
            "torch_threads": torch.get_num_threads(),
            "numpy": np.__version__,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        }
        for name in ("timm", "opencv-python-headless", "scikit-image", "scipy", "pandas"):
            try:
                env[name] = md.version(name)
            except md.PackageNotFoundError:
                env[name] = None
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            env["gpu"] = props.name
            env["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
            env["gpu_capability"] = f"{props.major}.{props.minor}"
            env["gpu_multiprocessors"] = props.multi_processor_count
        results.data["env"] = env
        print(
            f"torch {env['torch']} (CUDA {env['torch_cuda']}, cuDNN {env['cudnn']}), "
            f"GPU: {env.get('gpu', 'none')} ({env.get('gpu_memory_gib', '-')} GiB), "
            f"python {env['python']}, {env['cpu_count']} CPUs, timm {env['timm']}, "
            f"numpy {env['numpy']}, opencv {env['opencv-python-headless']}",
            flush=True,
        )
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            return False, f"--device {args.device} but torch sees no CUDA device", env
        return (
            True,
            f"device {args.device}",
            {k: env[k] for k in ("torch", "torch_cuda")} | {"gpu": env.get("gpu", "none")},
        )

    results.run("env", "versions", versions)

    def import_probe():
        out = subprocess.run(
            [sys.executable, "-c", _IMPORT_PROBE],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={
                **os.environ,
                "PYTHONPATH": os.pathsep.join(
                    p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
                ),
            },
            timeout=300,
        )
        line = [x for x in out.stdout.splitlines() if x.startswith("IMPORT-PROBE")]
        if not line:
            return False, f"probe printed nothing; stderr: {out.stderr[-400:]}", {}
        _, count, bad = line[-1].split(" ", 2)
        if bad.strip():
            return False, f"imports that need an optional package: {bad}", {"modules": int(count)}
        return True, "no hpa_kit module imports them at import time", {"modules": int(count)}

    results.run("env", "lazy imports (albumentations/pycocotools/iterstrat blocked)", import_probe)

    def optional():
        import importlib.util

        found = {m: importlib.util.find_spec(m) is not None for m in OPTIONAL}
        state["optional"] = found
        need = {"albumentations": "training", "pycocotools": "synthetic data, predict_folder"}
        missing = [f"{m} ({why})" for m, why in need.items() if not found[m]]
        if missing:
            return False, f"missing: {', '.join(missing)}", found
        return True, "albumentations and pycocotools importable (iterstrat not needed)", found

    results.run("env", "runtime packages", optional)


# --------------------------------------------------------------------------- section 1


def section_seg(results: Results, args: argparse.Namespace, sizes: Sizes, work: Path, state: dict):
    device = args.device
    on_cuda = device.startswith("cuda")

    def build():
        from hpa_kit.segment import load_segmentation_models
        from hpa_kit.segment.standin import standin_cost, write_standin_weights
        from hpa_kit.synth import generate_image

        t0 = time.perf_counter()
        # the script's own folder (a rerun with the same --workdir replaces its files)
        paths = write_standin_weights(work / "standin_weights", seed=1, overwrite=True)
        written = time.perf_counter() - t0
        on_device = load_segmentation_models(*paths, device)
        on_cpu = on_device if device == "cpu" else load_segmentation_models(*paths, "cpu")
        params = sum(p.numel() for p in on_cpu[0].parameters())
        cost = standin_cost()
        where = {str(next(m.parameters()).device) for m in on_device}
        images = [generate_image(size=sizes.seg_image, seed=(7, k)) for k in range(2)]
        state["seg_folder"] = paths[0].parent
        state["seg_models"] = on_device
        state["seg_models_cpu"] = on_cpu
        state["seg_synth"] = images
        ok = all(not m.training for m in (*on_device, *on_cpu)) and len(where) == 1
        detail = (
            f"cost-faithful stand-ins (DPN-92 U-Nets, random weights; {params / 1e6:.1f} M "
            f"parameters, {cost.flops / 1e9:.0f} GFLOPs per 3x512x512 forward each) written in "
            f"{written:.1f} s, loaded on {sorted(where)} and cpu"
        )
        metrics = {
            "params_m": round(params / 1e6, 2),
            "gflops_512": round(cost.flops / 1e9, 1),
            "write_s": round(written, 1),
            "image_px": sizes.seg_image,
        }
        return ok, detail, metrics

    results.run("seg", "stand-in networks written whole and loaded", build)

    def compare():
        _needs(state, "seg_models", "seg_synth")
        from hpa_kit.segment import predict_maps

        if not on_cuda:
            raise Skip("cuda-only (compares the device's maps with the CPU's)")
        images = [s.image for s in state["seg_synth"]]
        kwargs = {"scale": 0.25, "batch_size": sizes.seg_batch}
        t0 = time.perf_counter()
        dev = predict_maps(images, *state["seg_models"], device=device, **kwargs)
        t1 = time.perf_counter()
        cpu = predict_maps(images, *state["seg_models_cpu"], device="cpu", **kwargs)
        t2 = time.perf_counter()
        state["seg_maps_dev"], state["seg_maps_cpu"] = dev, cpu
        metrics: dict[str, Any] = {}
        ok = True
        for kind, index in (("nuclei", 0), ("cell", 1)):
            worst = {"max_abs": 0, "share_gt2": 0.0, "share_ne": 0.0}
            for d, c in zip(dev, cpu, strict=True):
                if d[index].shape != c[index].shape or d[index].dtype.name != "uint8":
                    return False, f"{kind} maps {d[index].shape} vs {c[index].shape}", {}
                diff = _maps_diff(d[index], c[index])
                worst = {k: max(worst[k], diff[k]) for k in worst}
            metrics |= {f"{kind}_{k}": v for k, v in worst.items()}
            ok = ok and worst["share_gt2"] <= TOL_MAP_SHARE
        metrics["maps_shape"] = str(dev[0][0].shape)
        metrics["device_s"] = round(t1 - t0, 3)
        metrics["cpu_s"] = round(t2 - t1, 3)
        detail = f"{len(images)} images, {device} (float16 autocast) vs cpu"
        return ok, detail + f"; pass if share_gt2 <= {TOL_MAP_SHARE}", metrics

    results.run("seg", "predict_maps device vs cpu", compare)

    def timing():
        _needs(state, "seg_models", "seg_synth")
        base = [s.image for s in state["seg_synth"]]
        images = [base[k % len(base)] for k in range(sizes.seg_time_images)]
        rows = {
            f"batch_{batch}": _seg_rates(state["seg_models"], images, batch, sizes, device)
            for batch in sizes.seg_batches
        }
        lines = [f"batch {k.split('_')[1]}: {_seg_line(row)}" for k, row in rows.items()]
        metrics = {"image_px": sizes.seg_image, **rows}
        detail = (
            f"{device}, cost-faithful stand-ins (both networks, maps at scale 0.25), "
            "ms per image: " + "; ".join(lines)
        )
        return any("error" not in row for row in rows.values()), detail, metrics

    results.run("seg", "time per image (stand-ins), by batch and precision", timing)

    def end_to_end():
        _needs(state, "seg_models", "seg_synth")
        import numpy as np

        from hpa_kit.segment import NetworkSegmenter, match_labels, segment

        pixel_size = 2048 / sizes.seg_image
        segmenter = NetworkSegmenter(
            *state["seg_models"],
            scale=0.25,
            batch_size=sizes.seg_batch,
            device=device,
            pixel_size=pixel_size,
        )
        synth = state["seg_synth"]
        t0 = time.perf_counter()
        out = segment([s.image for s in synth], segmenter=segmenter, batch_size=2)
        seconds = time.perf_counter() - t0
        problems = []
        f1s, agree, found = [], [], []
        for k, (s, (nuc, cells)) in enumerate(zip(synth, out, strict=True)):
            shape = s.image.shape[:2]
            for name, lab in (("nuclei", nuc), ("cells", cells)):
                if lab.shape != shape or lab.dtype != np.int32:
                    problems.append(
                        f"image {k} {name}: {lab.shape} {lab.dtype}, want {shape} int32"
                    )
            found.append(int(cells.max()))
            f1s.append(match_labels(s.cell_labels, cells, threshold=0.6).f1)
            if "seg_maps_cpu" in state:
                _, cpu_cells = segmenter.labels(*state["seg_maps_cpu"][k], shape)
                agree.append(match_labels(cpu_cells, cells, threshold=0.6).f1)
        metrics = {
            "label_shape": str(out[0][1].shape),
            "cells_found": found,
            "cells_true": [s.num_cells for s in synth],
            "f1_vs_truth_min": round(min(f1s), 4),
            "f1_vs_cpu_maps_min": round(min(agree), 4) if agree else None,
            "s_per_image": round(seconds / len(synth), 3),
        }
        ok = not problems and min(found) > 0
        detail = "; ".join(problems) or f"{len(out)} images labelled at full size on {device}"
        return ok, detail, metrics

    results.run("seg", "segment() with NetworkSegmenter", end_to_end)


# --------------------------------------------------------------------------- section 2


def _crops(image, labels, size: int, count: int | None = None):
    import numpy as np

    from hpa_kit.crop import crop_cells

    crops = crop_cells(image, labels, size=size, margin=0.1, mask_others=True).crops
    if count is not None and len(crops):
        reps = -(-count // len(crops))
        crops = np.concatenate([crops] * reps)[:count]
    return np.ascontiguousarray(crops)


def _calibrated_classifier(arch: str, config, crops, seed: int = 0):
    """A random-weight timm classifier whose BatchNorm statistics come from ``crops`` (so its
    activations have realistic scales) and whose head is scaled down (probabilities away from
    0 and 1, where differences would hide)."""
    import torch

    from hpa_kit.io import CHANNELS
    from hpa_kit.model import build_classifier

    torch.manual_seed(seed)
    model = build_classifier(arch, config.in_chans, config.num_classes, pretrained=False)
    index = [CHANNELS.index(c) for c in config.channels]
    x = torch.from_numpy(crops[..., index]).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(config.mean).view(1, -1, 1, 1)
    std = torch.tensor(config.std).view(1, -1, 1, 1)
    x = (x - mean) / std
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for start in range(0, len(x), 16):
            model(x[start : start + 16])
        model.get_classifier().weight.mul_(0.1)
    for m in norms:
        m.momentum = 0.1
    return model.eval()


def section_cls(results: Results, args: argparse.Namespace, sizes: Sizes, work: Path, state: dict):
    device = args.device
    on_cuda = device.startswith("cuda")
    arch = args.arch

    def build():
        import numpy as np

        from hpa_kit.model import ClassifierConfig, load_classifier, save_checkpoint
        from hpa_kit.synth import generate_image

        synth = [
            generate_image(size=sizes.cls_image, seed=(11, k))
            for k in range(sizes.cls_compare_images)
        ]
        state["cls_synth"] = synth
        crops = np.concatenate(
            [_crops(s.image, s.cell_labels, sizes.cls_compare_size) for s in synth]
        )
        config = ClassifierConfig(arch=arch, input_size=sizes.cls_compare_size)
        model = _calibrated_classifier(arch, config, crops)
        ckpt = save_checkpoint(work / "cls_ckpt", model, config)
        dev_model, dev_config = load_classifier(ckpt, device=device)
        cpu_model, _ = load_classifier(ckpt, device="cpu")
        state["cls_ckpt"] = ckpt
        state["cls_crops"] = crops
        state["cls_models"] = (dev_model, cpu_model, dev_config)
        where = str(next(dev_model.parameters()).device)
        detail = (
            f"{arch} ({config.in_chans} channels, {config.num_classes} classes) on {where} and cpu"
        )
        return dev_config == config, detail, {"crops": len(crops), "crop_px": config.input_size}

    results.run("cls", "classifier checkpoint saved and loaded", build)

    def compare(tta: str):
        def fn():
            _needs(state, "cls_models")
            from hpa_kit.predict import classify_crops

            dev_model, cpu_model, config = state["cls_models"]
            crops = state["cls_crops"]
            kwargs = {"tta": tta, "batch_size": sizes.cls_batch}
            dev = classify_crops(crops, dev_model, config, amp=True, **kwargs)
            cpu = classify_crops(crops, cpu_model, config, amp=True, **kwargs)
            state[f"cls_cpu_{tta}"] = cpu
            diff = _compare_probs(dev, cpu)
            metrics = {
                **diff,
                "crops": len(crops),
                "unsaturated_share": float(((cpu > 0.02) & (cpu < 0.98)).mean()),
            }
            if not on_cuda:
                raise Skip(f"cuda-only (ran cpu vs cpu: max diff {diff['max_abs']:.2g})")
            ok = diff["max_abs"] <= TOL_PROB_AMP
            return (
                ok,
                f"tta={tta}, {device} float16 autocast vs cpu float32 (tol {TOL_PROB_AMP})",
                metrics,
            )

        return fn

    for tta in ("none", "seed"):
        results.run("cls", f"classify_crops device(amp) vs cpu, tta={tta}", compare(tta))

    def fp16_vs_fp32():
        _needs(state, "cls_models")
        if not on_cuda:
            raise Skip("cuda-only (amp is ignored on the CPU)")
        from hpa_kit.predict import classify_crops

        dev_model, _, config = state["cls_models"]
        crops = state["cls_crops"]
        metrics: dict[str, Any] = {}
        ok = True
        for tta in ("none", "seed"):
            kwargs = {"tta": tta, "batch_size": sizes.cls_batch}
            half = classify_crops(crops, dev_model, config, amp=True, **kwargs)
            full = classify_crops(crops, dev_model, config, amp=False, **kwargs)
            d16 = _compare_probs(half, full)
            metrics[f"fp16_vs_fp32_max_{tta}"] = d16["max_abs"]
            ok = ok and d16["max_abs"] <= TOL_PROB_AMP
            if f"cls_cpu_{tta}" in state:
                d32 = _compare_probs(full, state[f"cls_cpu_{tta}"])
                metrics[f"fp32_vs_cpu_max_{tta}"] = d32["max_abs"]
                ok = ok and d32["max_abs"] <= TOL_PROB_FP32
        import torch

        metrics["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
        detail = (
            f"amp on/off on {device}; fp32 {device} vs cpu (tol {TOL_PROB_AMP} / {TOL_PROB_FP32})"
        )
        return ok, detail, metrics

    results.run("cls", "float16 vs float32 (amp=False)", fp16_vs_fp32)

    def throughput():
        _needs(state, "cls_models", "cls_synth")
        from hpa_kit.model import ClassifierConfig
        from hpa_kit.predict import classify_crops

        dev_model = state["cls_models"][0]
        synth = state["cls_synth"][0]
        table: dict[str, float] = {}
        lines = []
        _reset_peak(device)
        for size in sizes.cls_sizes:
            config = ClassifierConfig(arch=arch, input_size=size)
            crops = _crops(synth.image, synth.cell_labels, size, sizes.cls_items)
            modes = [("none", True), ("seed", True)]
            if on_cuda:
                modes.append(("none", False))
            row = []
            for tta, amp in modes:
                rate = _rate(
                    lambda c=crops, t=tta, a=amp, cfg=config: classify_crops(
                        c, dev_model, cfg, tta=t, batch_size=sizes.cls_batch, amp=a
                    ),
                    len(crops),
                    sizes.min_seconds,
                    device,
                )
                key = f"cells_per_s_{size}_{tta}" + ("" if amp or not on_cuda else "_fp32")
                table[key] = round(rate["per_s"], 1)
                row.append(f"{tta}{'' if amp or not on_cuda else '/fp32'} {rate['per_s']:.0f}")
            lines.append(f"{size}px: " + ", ".join(row))
        table["batch_size"] = sizes.cls_batch
        table["peak_mib"] = _peak_mib(device)
        precision = "float16 autocast" if on_cuda else "float32"
        detail = f"{arch} on {device} ({precision}), cells/s: " + "; ".join(lines)
        return True, detail, table

    results.run("cls", "throughput (cells/s)", throughput)


# --------------------------------------------------------------------------- section 3


def section_train(
    results: Results, args: argparse.Namespace, sizes: Sizes, work: Path, state: dict
):
    device = args.device
    on_cuda = device.startswith("cuda")

    def data():
        import pandas as pd

        synth = _write_synth(
            work / "train", n=sizes.train_images, size=sizes.train_image_size, seed=3, cells=(6, 12)
        )
        table = pd.read_csv(synth.train_csv, dtype={"ID": str})
        table["fold"] = [k % 4 for k in range(len(table))]  # no iterative-stratification needed
        path = work / "train" / "train_folds.csv"
        table.to_csv(path, index=False)
        state["train_csv"] = path
        state["train_images"] = synth.out / "images"
        state["train_ids"] = list(table["ID"])
        ok = len(table) == sizes.train_images and not synth.failures
        return ok, f"{len(table)} images of {sizes.train_image_size} px", {"cells": synth.num_cells}

    results.run("train", "synthetic training set", data)

    def fit_run():
        _needs(state, "train_csv")
        _require(
            "albumentations",
            "hpa_kit.augment's train/val transforms; fit has no option without them",
        )
        from hpa_kit.train import TrainConfig, fit

        config = TrainConfig(
            train_csv=os.fspath(state["train_csv"]),
            images_dir=os.fspath(state["train_images"]),
            out_dir=os.fspath(work / "run"),
            fold=0,
            n_folds=4,
            arch=args.arch,
            input_size=sizes.train_input,
            batch_size=sizes.train_batch,
            epochs=sizes.train_epochs,
            lr=1e-3,
            amp=True,
            workers=sizes.train_workers,
            device=device,
            progress=False,
        )
        _reset_peak(device)
        t0 = time.perf_counter()
        result = fit(config)
        seconds = time.perf_counter() - t0
        rows = result.history
        losses = [(r["train_loss"], r["val_loss"]) for r in rows]
        finite = bool(rows) and all(math.isfinite(a) and math.isfinite(b) for a, b in losses)
        train_rows = sizes.train_images - sizes.train_images // 4
        steps = sizes.train_epochs * math.ceil(train_rows / sizes.train_batch)
        metrics = {
            "epochs": result.epochs_done,
            "optimizer_steps": steps,
            "losses": [[round(a, 5), round(b, 5)] for a, b in losses],
            "fit_s": round(seconds, 2),
            "s_per_step": round(seconds / steps, 3),
            "peak_mib": _peak_mib(device),
        }
        state["train_result"] = result
        detail = f"{steps} steps on {device}, amp={'on' if on_cuda else 'off (cpu)'}; losses finite: {finite}"
        return finite and result.finished, detail, metrics

    results.run("train", "fit() a few steps", fit_run)

    def outputs():
        _needs(state, "train_result")
        import torch

        from hpa_kit.model import read_config

        result = state["train_result"]
        files = [
            result.best_dir / "model.pt",
            result.best_dir / "config.json",
            result.last_dir / "train_state.pt",
        ]
        missing = [os.fspath(p) for p in files if not p.is_file()]
        if missing:
            return False, f"missing {missing}", {}
        saved = torch.load(
            result.last_dir / "train_state.pt", map_location="cpu", weights_only=False
        )
        scaler = saved.get("scaler") or {}
        scale = scaler.get("scale")
        config = read_config(result.best_dir)
        metrics = {
            "scaler_scale": None if scale is None else float(scale),
            "best_epoch": result.best_epoch,
            "input_size": config.input_size,
        }
        ok = config.input_size == sizes.train_input and config.arch == args.arch
        if on_cuda:  # GradScaler enabled: its state is saved and its scale is finite
            ok = ok and scale is not None and math.isfinite(float(scale)) and float(scale) > 0
            detail = f"best/, last/train_state.pt written; GradScaler scale {scale}"
        else:
            detail = "best/, last/train_state.pt written (GradScaler off on the CPU)"
        state["train_ckpt"] = result.best_dir
        return ok, detail, metrics

    results.run("train", "checkpoint and GradScaler state written", outputs)

    def reload():
        _needs(state, "train_ckpt")
        import numpy as np

        from hpa_kit.io import read_image, resize_area
        from hpa_kit.model import load_classifier
        from hpa_kit.predict import classify_crops

        ckpt = state["train_ckpt"]
        cpu_model, config = load_classifier(ckpt, device="cpu")
        dev_model, _ = load_classifier(ckpt, device=device)
        ids = state["train_ids"][:16]
        crops = np.stack(
            [resize_area(read_image(state["train_images"], i), config.input_size) for i in ids]
        )
        cpu = classify_crops(crops, cpu_model, config, tta="none", batch_size=16)
        dev = classify_crops(crops, dev_model, config, tta="none", batch_size=16, amp=True)
        diff = _compare_probs(dev, cpu)
        metrics = {**diff, "images": len(ids)}
        if on_cuda:
            full = classify_crops(crops, dev_model, config, tta="none", batch_size=16, amp=False)
            metrics["fp32_vs_cpu_max_abs"] = _compare_probs(full, cpu)["max_abs"]
        if not on_cuda:
            raise Skip(f"cuda-only (loaded on cpu twice: max diff {diff['max_abs']:.2g})")
        ok = diff["max_abs"] <= TOL_PROB_AMP
        return ok, f"best/ on cpu vs {device} (amp), tol {TOL_PROB_AMP}", metrics

    results.run("train", "checkpoint loads on cpu, predicts as on device", reload)


# --------------------------------------------------------------------------- section 4


def section_predict(
    results: Results, args: argparse.Namespace, sizes: Sizes, work: Path, state: dict
):
    device = args.device

    def data():
        synth = _write_synth(
            work / "test",
            n=sizes.predict_images,
            size=sizes.predict_image_size,
            seed=4,
            cells=(10, 25),
        )
        state["test"] = synth
        ok = len(synth.ids) == sizes.predict_images and not synth.failures
        detail = f"{len(synth.ids)} images of {sizes.predict_image_size} px"
        return ok, detail, {"cells_true": synth.num_cells}

    results.run("predict", "synthetic test folder", data)

    def run():
        _needs(state, "test")
        _require("pycocotools", "mask encoding")
        from hpa_kit.predict import PredictOptions, predict_folder
        from hpa_kit.segment import NetworkSegmenter
        from hpa_kit.submission import validate_submission

        ckpt = state.get("train_ckpt") or state.get("cls_ckpt")
        if ckpt is None:
            raise Skip("no classifier checkpoint from the train or cls checks")
        if state.get("seg_folder") is None:
            raise Skip("no stand-in segmentation weights from the seg checks")
        segmenter = NetworkSegmenter.from_dir(
            state["seg_folder"],
            device,
            scale=0.25,
            batch_size=sizes.seg_batch,
            pixel_size=2048 / sizes.predict_image_size,
        )
        options = PredictOptions(
            tta="seed",
            batch_size=sizes.predict_batch,
            num_workers=sizes.predict_workers,
            executor="process",
            device=device,
            progress=False,
        )
        synth = state["test"]
        out = work / "submission.csv"
        resume = work / "predict.resume.jsonl"
        _reset_peak(device)
        report = predict_folder(
            synth.out / "images",
            synth.sample_submission,
            [ckpt],
            out=out,
            segmenter=segmenter,
            options=options,
            resume=resume,
        )
        print(report.summary(), flush=True)
        validation = validate_submission(out, synth.sample_submission)
        state["predict_args"] = (synth, ckpt, segmenter, options, out, resume)
        per_image = report.seconds / max(report.processed, 1)
        metrics = {
            "images": report.processed,
            "cells": report.cells,
            "cells_true": synth.num_cells,
            "s_per_image": round(per_image, 3),
            "seconds": round(report.seconds, 2),
            "stage_s": {k: round(v, 2) for k, v in report.timings.items()},
            "failures": len(report.failures),
            "no_cells": len(report.no_cells),
            "valid": validation.ok,
            "peak_mib": _peak_mib(device),
            "checkpoint": ckpt.parent.name + "/" + ckpt.name,
        }
        problems = [f"{k}: {v}" for k, v in report.failures.items()]
        if not validation.ok:
            problems.append(validation.summary(limit=5))
        if report.no_cells:
            problems.append(f"no cells in {list(report.no_cells)}")
        ok = not problems and report.complete and report.cells > 0
        detail = "; ".join(problems) or (
            f"{report.processed} images on {device}, {per_image:.2f} s/image "
            f"({sizes.predict_workers} workers, tta seed, stand-in segmenter), submission valid"
        )
        return ok, detail, metrics

    results.run("predict", "predict_folder + validate_submission", run)

    def again():
        _needs(state, "predict_args")
        from hpa_kit.predict import predict_folder

        synth, ckpt, segmenter, options, out, resume = state["predict_args"]
        first = out.read_bytes()
        out2 = out.with_name("submission_resumed.csv")
        report = predict_folder(
            synth.out / "images",
            synth.sample_submission,
            [ckpt],
            out=out2,
            segmenter=segmenter,
            options=options.replace(progress=False),
            resume=resume,
        )
        same = out2.read_bytes() == first
        ok = same and report.resumed == len(synth.ids) and report.processed == 0
        detail = f"resumed {report.resumed} of {len(synth.ids)}, same bytes: {same}"
        return ok, detail, {"seconds": round(report.seconds, 2)}

    results.run("predict", "resume run writes the same csv", again)


# --------------------------------------------------------------------------- main


def _gpu_name(device: str) -> str:
    """The GPU's name when ``device`` is a CUDA device torch can see, else "no GPU"."""
    try:
        import torch

        if device.startswith("cuda") and torch.cuda.is_available():
            return torch.cuda.get_device_name(torch.device(device))
    except Exception:  # noqa: BLE001 - only a label for the summary line
        pass
    return "no GPU"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (the CPU test)")
    parser.add_argument("--json", default=None, help="write all results here")
    parser.add_argument("--arch", default="efficientnet_b0", help="timm classifier")
    parser.add_argument(
        "--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS, help="run only these"
    )
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="FIELD=VALUE",
        help="override sizes, e.g. --set cls_items=64 cls_sizes=256,384 min_seconds=1",
    )
    parser.add_argument("--workdir", default=None, help="keep the data here (default: a temp dir)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: 1 with --quick on the cpu, where two OpenMP threads on "
        "a shared CPU ran 3-25x slower, as hpa_kit's demo notes; else torch's default)",
    )
    args = parser.parse_args(argv)

    sizes = _override(Sizes.quick() if args.quick else Sizes(), args.set, parser)
    results = Results(args.json, args)
    results.data["sizes"] = dataclasses.asdict(sizes)
    state: dict[str, Any] = {}
    print(f"gpu_check: device {args.device}, {'quick' if args.quick else 'full'} sizes", flush=True)
    if args.threads is None and args.quick and args.device == "cpu":
        args.threads = 1
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = Path(args.workdir) if args.workdir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        steps = {
            "env": lambda: section_env(results, args, state),
            "seg": lambda: section_seg(results, args, sizes, work, state),
            "cls": lambda: section_cls(results, args, sizes, work, state),
            "train": lambda: section_train(results, args, sizes, work, state),
            "predict": lambda: section_predict(results, args, sizes, work, state),
        }
        for name in SECTIONS:
            if name not in args.sections:
                continue
            print(f"--- {name} ---", flush=True)
            t0 = time.perf_counter()
            try:
                steps[name]()
            except Exception as exc:  # a section's own failure, outside its checks
                results.record(name, "section", "FAIL", _cause(exc), {})
            print(f"--- {name}: {time.perf_counter() - t0:.1f} s", flush=True)
        summary = results.summary()

    gpu = results.data["env"].get("gpu") or _gpu_name(args.device)
    print(
        f"=== summary ({args.device}, {gpu}): {summary['PASS']} PASS, {summary['FAIL']} FAIL, "
        f"{summary['SKIP']} SKIP in {summary['wall_s']} s"
        + (f"; results in {args.json}" if args.json else ""),
        flush=True,
    )
    for line in summary["failed"]:
        print(f"  FAIL {line}", flush=True)
    return 1 if summary["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())

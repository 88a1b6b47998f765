# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # HPA single-cell classification: inference (offline submission kernel)
#
# Segments every test image into cells, classifies each cell with the attached hpa_kit
# checkpoints and writes `submission.csv`. All the work is done by `hpa_kit`; this notebook
# only gathers paths and switches.
#
# Attach (Kaggle, internet off): the competition, the **hpa_kit wheels** dataset
# (`make push-dataset`), a dataset of **checkpoints** (folders holding `config.json` +
# `model.pt`) and, unless `HPA_CLASSICAL=1`, the **segmentation weights** dataset
# (`dpn_unet_nuclei_v1.pth`, `dpn_unet_cell_3ch_v1.pth` and a `pytorch_zoo` wheel).
# Every setting below can be overridden by the environment variable named beside it.

# %% config
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

INPUT = Path(os.environ.get("HPA_INPUT", "/kaggle/input"))  # attached datasets live here
COMPETITION = INPUT / "hpa-single-cell-image-classification"
IMAGES = Path(os.environ.get("HPA_IMAGES", COMPETITION / "test"))  # {ID}_{color}.png
SAMPLE = Path(os.environ.get("HPA_SAMPLE", COMPETITION / "sample_submission.csv"))
OUT = Path(os.environ.get("HPA_OUT", "/kaggle/working"))  # submission.csv goes here
# Checkpoint folders (config.json + model.pt), separated by os.pathsep; empty: every
# such folder found under INPUT.
MODELS = os.environ.get("HPA_MODELS", "")
# Folder of hpacellseg's weights; empty: the folder under INPUT holding the nuclei weights.
SEG_WEIGHTS = os.environ.get("HPA_SEG_WEIGHTS", "")
# Folder of wheels for an offline install; empty: the folder under INPUT holding hpa_kit.
WHEELS = os.environ.get("HPA_WHEELS", "")
# What pip installs when no wheels folder is found (online: Colab): a git URL or a wheel.
HPA_KIT_SPEC = os.environ.get("HPA_KIT_SPEC", "")
CLASSICAL = os.environ.get("HPA_CLASSICAL", "0") == "1"  # weights-free segmentation
SEG_SCALE = float(os.environ.get("HPA_SEG_SCALE", "0.25"))
TTA = os.environ.get("HPA_TTA", "seed")  # "none", "seed" or "d4"
BATCH_SIZE = int(os.environ.get("HPA_BATCH_SIZE", "64"))  # cell crops per forward pass
# Emit (cell, class) pairs with probability >= FLOOR; 0 = all 19 classes (a ~275 MB CSV).
FLOOR = float(os.environ.get("HPA_FLOOR", "0"))
NUM_WORKERS = int(os.environ.get("HPA_NUM_WORKERS", "2"))
# Torch threads for classifying; empty: the cores the workers leave (at least 1).
THREADS = os.environ.get("HPA_THREADS", "")
DEVICE = os.environ.get("HPA_DEVICE", "auto")  # "auto": cuda when available

if not WHEELS:  # Kaggle mounts datasets at INPUT/<slug> (or deeper: search 3 levels)
    found = sorted(INPUT.glob("*/hpa_kit-*.whl")) or sorted(INPUT.glob("*/*/*/hpa_kit-*.whl"))
    WHEELS = str(found[-1].parent) if found else ""
if not SEG_WEIGHTS and not CLASSICAL:
    found = sorted(INPUT.glob("**/dpn_unet_nuclei_v1.pth"))
    SEG_WEIGHTS = str(found[0].parent) if found else ""

# %% install: nothing if installed; offline from WHEELS (Kaggle); else online (Colab)
PIP = [sys.executable, "-m", "pip", "install", "--quiet"]
module_spec = importlib.util.find_spec("hpa_kit")
# origin None: only a folder named hpa_kit (e.g. a source checkout in the working
# directory) was found, a namespace package without the code: install the wheel anyway.
if module_spec is None or module_spec.origin is None:
    if not (WHEELS or HPA_KIT_SPEC):
        raise RuntimeError("hpa_kit is missing: attach the wheels dataset or set HPA_KIT_SPEC")
    source = ["--no-index", "--find-links", WHEELS, "hpa_kit"] if WHEELS else [HPA_KIT_SPEC]
    subprocess.run(PIP + source, check=True)
if not CLASSICAL and importlib.util.find_spec("pytorch_zoo") is None:
    # hpacellseg's pickled networks need pytorch_zoo: a wheel in WHEELS or SEG_WEIGHTS.
    links = [arg for d in (WHEELS, SEG_WEIGHTS) if d for arg in ("--find-links", d)]
    subprocess.run(PIP + ["--no-index", "--no-deps", *links, "pytorch_zoo"], check=True)
importlib.invalidate_caches()

# %% inputs
import hpa_kit  # noqa: E402
from hpa_kit.predict import resolve_device  # noqa: E402

if MODELS:
    checkpoints = [Path(p) for p in MODELS.split(os.pathsep) if p]
else:  # every checkpoint folder (config.json + model.pt) among the attached datasets
    checkpoints = sorted(p.parent for p in INPUT.glob("**/model.pt"))
print(f"images: {IMAGES}\nsample: {SAMPLE}\ncheckpoints: {[str(c) for c in checkpoints]}")
print(f"segmentation: {'classical' if CLASSICAL else SEG_WEIGHTS}")

# %% predict
DEVICE = resolve_device(DEVICE)  # "auto" -> cuda when available; a missing GPU says so here
segmenter = (
    hpa_kit.ClassicalSegmenter(scale=SEG_SCALE)
    if CLASSICAL
    else hpa_kit.NetworkSegmenter.from_dir(SEG_WEIGHTS, DEVICE, scale=SEG_SCALE)
)
options = hpa_kit.PredictOptions(
    tta=TTA,
    batch_size=BATCH_SIZE,
    floor=FLOOR,
    num_workers=NUM_WORKERS,
    threads=int(THREADS) if THREADS else None,
    device=DEVICE,
)
OUT.mkdir(parents=True, exist_ok=True)
report = hpa_kit.predict_folder(
    IMAGES, SAMPLE, checkpoints, out=OUT / "submission.csv", segmenter=segmenter, options=options
)
print(report.summary())

# %% check the submission
validation = hpa_kit.validate_submission(OUT / "submission.csv", SAMPLE)
print(validation.summary())
assert validation.ok, "submission.csv does not match the sample submission"

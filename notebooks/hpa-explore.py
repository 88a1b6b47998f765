# %% [markdown]
# # HPA single-cell classification: exploration
#
# One image at a time: its four channels, the colour composite, the cell segmentation and,
# when checkpoints are given, each cell's top classes. Pictures are shown inline and saved
# as PNGs under `HPA_OUT`. All the work is done by `hpa_kit` (`io`, `segment`, `viz`,
# `predict`); this notebook only gathers paths and switches, each overridable by the
# environment variable named beside it.

# %% config
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ON_KAGGLE = Path("/kaggle/input").is_dir()
INPUT = Path(os.environ.get("HPA_INPUT", "/kaggle/input" if ON_KAGGLE else "/content"))
COMPETITION = INPUT / "hpa-single-cell-image-classification"
IMAGES = Path(os.environ.get("HPA_IMAGES", COMPETITION / "train"))  # {ID}_{color}.png
IMAGE_ID = os.environ.get("HPA_IMAGE_ID", "")  # "": the first id in IMAGES
OUT = Path(os.environ.get("HPA_OUT", "/kaggle/working" if ON_KAGGLE else "/content/explore"))
# Checkpoint folders (config.json + model.pt), separated by os.pathsep; "": no predictions.
MODELS = os.environ.get("HPA_MODELS", "")
# Folder of hpacellseg's weights; "": on Kaggle the attached folder holding them, if any.
SEG_WEIGHTS = os.environ.get("HPA_SEG_WEIGHTS", "")
CLASSICAL = os.environ.get("HPA_CLASSICAL", "0") == "1"  # weights-free segmentation
SEG_SCALE = float(os.environ.get("HPA_SEG_SCALE", "0.25"))
TTA = os.environ.get("HPA_TTA", "none")  # "none", "seed" or "d4"
TOP_K = int(os.environ.get("HPA_TOP_K", "2"))  # classes written on each cell
VIEW_SIZE = int(os.environ.get("HPA_VIEW_SIZE", "768"))  # side of the pictures shown
# Folder of wheels for an offline install; empty: the folder under INPUT holding hpa_kit.
WHEELS = os.environ.get("HPA_WHEELS", "")
# What pip installs when no wheels folder is found (online: Colab): a git URL or a wheel.
HPA_KIT_SPEC = os.environ.get("HPA_KIT_SPEC", "")

if not WHEELS:  # Kaggle mounts datasets at INPUT/<slug> (or deeper: search 3 levels)
    found = sorted(INPUT.glob("*/hpa_kit-*.whl")) or sorted(INPUT.glob("*/*/*/hpa_kit-*.whl"))
    WHEELS = str(found[-1].parent) if found else ""
if not SEG_WEIGHTS and not CLASSICAL and ON_KAGGLE:
    found = sorted(INPUT.glob("**/dpn_unet_nuclei_v1.pth"))
    SEG_WEIGHTS = str(found[0].parent) if found else ""
CLASSICAL = CLASSICAL or not SEG_WEIGHTS  # no weights: the classical segmenter

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

# %% the image and its channels (red, green, blue, yellow from left to right)
import numpy as np  # noqa: E402
from IPython.display import display  # noqa: E402
from PIL import Image  # noqa: E402

import hpa_kit  # noqa: E402
from hpa_kit import io, viz  # noqa: E402
from hpa_kit.labels import CLASS_NAMES  # noqa: E402

image_id = IMAGE_ID or io.list_image_ids(IMAGES)[0]
image = hpa_kit.read_image(IMAGES, image_id)  # H x W x 4 uint8, RGBY
view = io.resize_area(image, VIEW_SIZE)
print(f"{image_id}: {image.shape[1]} x {image.shape[0]} px")
display(Image.fromarray(np.hstack([view[..., k] for k in range(4)])))

# %% colour composite
OUT.mkdir(parents=True, exist_ok=True)
display(Image.fromarray(viz.composite(view)))

# %% segmentation
segmenter = (
    hpa_kit.ClassicalSegmenter(scale=SEG_SCALE)
    if CLASSICAL
    else hpa_kit.NetworkSegmenter.from_dir(SEG_WEIGHTS, scale=SEG_SCALE)
)
((nuclei, cells),) = segmenter.segment([image])
print(f"{segmenter}: {cells.max()} cells, {nuclei.max()} nuclei")
outlined = viz.draw_outlines(viz.composite(image), cells, thickness=max(1, image.shape[0] // 512))
viz.save_png(OUT / f"{image_id}_cells.png", outlined)
display(Image.fromarray(io.resize_area(outlined, VIEW_SIZE)))

# %% per-cell predictions (with HPA_MODELS)
probs = None
if MODELS and cells.max() > 0:
    from hpa_kit.predict import load_ensemble, predict_image

    classifiers = load_ensemble([p for p in MODELS.split(os.pathsep) if p], "cpu")
    cell_ids, cell_probs = predict_image(
        image, cells, classifiers, options=hpa_kit.PredictOptions(tta=TTA, num_workers=0)
    )
    probs = dict(zip(cell_ids.tolist(), cell_probs, strict=True))
    print("mean probability over cells:")
    print({CLASS_NAMES[k]: round(float(v), 3) for k, v in enumerate(cell_probs.mean(axis=0))})
picture = viz.overlay(image, cells, probs=probs, top_k=TOP_K)
viz.save_png(OUT / f"{image_id}_overlay.png", picture)
display(Image.fromarray(io.resize_area(picture, VIEW_SIZE)))

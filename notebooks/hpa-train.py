# %% [markdown]
# # HPA single-cell classification: training (Kaggle or Colab)
#
# Trains one fold of an image-level classifier with `hpa_kit.train.fit` and leaves a
# checkpoint folder (`best/`: `model.pt` + `config.json`) ready to be uploaded as the
# checkpoints dataset of the inference kernel. All the work is done by `hpa_kit`; this
# notebook only gathers paths and switches.
#
# - **Kaggle**: attach the competition (or a dataset of images resized by `hpa-kit prepare`)
#   and the hpa_kit wheels dataset; turn the GPU on. Internet on lets `pretrained` download
#   ImageNet weights.
# - **Colab**: set `HPA_TRAIN_CSV`, `HPA_IMAGES` and `HPA_OUT` (e.g. on a mounted Drive) and
#   `HPA_KIT_SPEC` to what pip should install (a git URL or a wheel path).
#
# Every setting below can be overridden by the environment variable named beside it; a YAML
# or JSON `TrainConfig` file (`HPA_TRAIN_CONFIG`) replaces the individual switches.
#
# **Cell learning.** With `TRAIN_CSV` = a table of cell crops (one row per crop, its image's
# labels in `Label` and its image's id in `image`, as `hpa_kit.crop.write_cell_crops` writes
# it), `CELL_LEARNING` chooses how the crops learn from image-level labels:
# `image-labels` (every crop its image's labels), `bags` (the crops of an image form a bag;
# their logits are pooled by `POOLING` into the image's logits for the loss) or `refined`
# (`image-labels` first, then `REFINE_ROUNDS` rounds of crop training on soft labels that the
# previous model gives, never outside the image's labels). Every mode writes the same
# per-cell checkpoint; on the synthetic benchmark `refined` with 2 rounds recovered about half
# or more of what perfect cell labels would give (BENCHMARKS.md).

# %% config
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ON_KAGGLE = Path("/kaggle/input").is_dir()
INPUT = Path(os.environ.get("HPA_INPUT", "/kaggle/input" if ON_KAGGLE else "/content"))
COMPETITION = INPUT / "hpa-single-cell-image-classification"
TRAIN_CSV = Path(os.environ.get("HPA_TRAIN_CSV", COMPETITION / "train.csv"))  # ID,Label[,fold]
IMAGES = Path(os.environ.get("HPA_IMAGES", COMPETITION / "train"))  # {ID}_{color}.png
OUT = Path(os.environ.get("HPA_OUT", "/kaggle/working/run" if ON_KAGGLE else "/content/run"))
TRAIN_CONFIG = os.environ.get("HPA_TRAIN_CONFIG", "")  # a TrainConfig YAML/JSON file, or ""
FOLD = int(os.environ.get("HPA_FOLD", "0"))
N_FOLDS = int(os.environ.get("HPA_N_FOLDS", "5"))  # used when TRAIN_CSV has no fold column
ARCH = os.environ.get("HPA_ARCH", "efficientnet_b0")
PRETRAINED = os.environ.get("HPA_PRETRAINED", "1") == "1"  # ImageNet weights need internet
INPUT_SIZE = int(os.environ.get("HPA_INPUT_SIZE", "512"))
EPOCHS = int(os.environ.get("HPA_EPOCHS", "5"))
BATCH_SIZE = int(os.environ.get("HPA_BATCH_SIZE", "16"))
LR = float(os.environ.get("HPA_LR", "6e-4"))
WORKERS = int(os.environ.get("HPA_WORKERS", "2"))
LIMIT_TRAIN = os.environ.get("HPA_LIMIT_TRAIN", "")  # a count or fraction of rows, "" = all
RESUME = os.environ.get("HPA_RESUME", "0") == "1"  # continue from OUT/last
CELL_LEARNING = os.environ.get("HPA_CELL_LEARNING", "image-labels")  # or bags, refined
POOLING = os.environ.get("HPA_POOLING", "lse")  # bags: max, lse (smooth max) or mean
REFINE_ROUNDS = int(os.environ.get("HPA_REFINE_ROUNDS", "2"))  # refined: soft-label rounds
# Folder of wheels for an offline install; empty: the folder under INPUT holding hpa_kit.
WHEELS = os.environ.get("HPA_WHEELS", "")
# What pip installs when no wheels folder is found (online: Colab): a git URL or a wheel.
HPA_KIT_SPEC = os.environ.get("HPA_KIT_SPEC", "")

if not WHEELS:  # Kaggle mounts datasets at INPUT/<slug> (or deeper: search 3 levels)
    found = sorted(INPUT.glob("*/hpa_kit-*.whl")) or sorted(INPUT.glob("*/*/*/hpa_kit-*.whl"))
    WHEELS = str(found[-1].parent) if found else ""

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
importlib.invalidate_caches()

# %% training configuration
from hpa_kit.train import TrainConfig, fit, parse_override  # noqa: E402

switches = {
    "train_csv": str(TRAIN_CSV),
    "images_dir": str(IMAGES),
    "out_dir": str(OUT),
    "fold": FOLD,
    "n_folds": N_FOLDS,
    "resume": RESUME,
}
if TRAIN_CONFIG:
    config = TrainConfig.from_file(TRAIN_CONFIG, overrides=switches)
else:
    config = TrainConfig(
        **switches,
        arch=ARCH,
        pretrained=PRETRAINED,
        input_size=INPUT_SIZE,
        epochs=EPOCHS,
        batch_size=BATCH_SIZE,
        lr=LR,
        workers=WORKERS,
        limit_train=parse_override(f"limit_train={LIMIT_TRAIN}")[1] if LIMIT_TRAIN else None,
        cell_learning=CELL_LEARNING,
        pooling=POOLING,
        refine_rounds=REFINE_ROUNDS,
    )
print(config)

# %% train
result = fit(config)
print(f"best epoch {result.best_epoch}: {config.monitor} = {result.best_score}")
print(f"checkpoint for the inference kernel: {result.best_dir}")

# %% per-epoch log (`stage`: stage0, round1, ... of a refined run)
import pandas as pd  # noqa: E402

pd.DataFrame(result.history).drop(columns=["per_class_f1"], errors="ignore")

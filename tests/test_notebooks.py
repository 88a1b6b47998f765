"""The notebooks: jupytext pairs in sync, one config cell on top, and end-to-end runs with
nbclient (a temporary kernelspec pointing at this interpreter) on synthetic and real data."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import jupytext
import pandas as pd
import pytest
from jupytext.compare import compare_notebooks
from nbrun import NOTEBOOKS, make_kernelspec, outputs_text, run_notebook

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("hpa-inference", "hpa-train", "hpa-explore")
TINY_ARCH = "test_efficientnet"  # timm's ~0.1 M-parameter test network


# --------------------------------------------------------------------------- structure


def test_jupytext_config_pairs_ipynb_with_percent_scripts():
    text = (NOTEBOOKS / "jupytext.toml").read_text()
    assert re.search(r'^formats\s*=\s*"ipynb,py:percent"\s*$', text, re.M)


def test_every_notebook_is_a_pair():
    scripts = sorted(p.stem for p in NOTEBOOKS.glob("*.py"))
    ipynbs = sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))
    assert scripts == ipynbs == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_pair_is_in_sync(name):
    script = jupytext.read(NOTEBOOKS / f"{name}.py")
    notebook = jupytext.read(NOTEBOOKS / f"{name}.ipynb")
    # Raises on any difference in cell types or inputs.
    compare_notebooks(notebook, script, fmt="py:percent")
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")


@pytest.mark.parametrize("name", NAMES)
def test_settings_come_from_one_config_cell_on_top(name):
    cells = [c for c in jupytext.read(NOTEBOOKS / f"{name}.py").cells if c.cell_type == "code"]
    config, rest = cells[0], cells[1:]
    assert config.metadata.get("title") == "config"
    assert "os.environ.get(" in config.source
    assert not [c.source[:60] for c in rest if "os.environ" in c.source]
    assert "install" in cells[1].metadata.get("title", "")
    assert "--no-index" in cells[1].source and 'find_spec("hpa_kit")' in cells[1].source


def test_no_kaggle_or_colab_paths_inside_the_package():
    offenders = []
    for path in sorted((ROOT / "hpa_kit").rglob("*.py")):
        if path.parent.name == "commands" or path.name == "cli.py":
            continue  # CLI defaults may name platform paths (paths at the edge)
        text = path.read_text()
        offenders += [f"{path.name}: {m}" for m in re.findall(r"/kaggle/\w+|/content/\w*", text)]
    assert offenders == []


# --------------------------------------------------------------------------- execution


@pytest.fixture(scope="module")
def jupyter_path(tmp_path_factory) -> Path:
    """A kernelspec "hpa-test" running this interpreter (found through JUPYTER_PATH)."""
    return make_kernelspec(tmp_path_factory.mktemp("jupyter"), sys.executable)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    import torch

    from hpa_kit.model import ClassifierConfig, build_classifier, save_checkpoint

    torch.manual_seed(0)
    config = ClassifierConfig(arch=TINY_ARCH, channels=("red", "green", "blue"), input_size=32)
    path = tmp_path_factory.mktemp("models") / "fold0"
    save_checkpoint(path, build_classifier(TINY_ARCH, 3), config)
    return path


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    from hpa_kit.synth import write_dataset

    out = tmp_path_factory.mktemp("synth")
    write_dataset(out, n=2, size=768, seed=3)
    return out


def _validate(submission: Path, sample: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hpa_kit", "validate", str(submission), "--sample", str(sample)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _inference_settings(images: Path, sample: Path, checkpoint: Path, out: Path) -> dict:
    return {
        "HPA_INPUT": str(out / "no-input"),  # nothing to discover: every path is given
        "HPA_IMAGES": str(images),
        "HPA_SAMPLE": str(sample),
        "HPA_MODELS": str(checkpoint),
        "HPA_OUT": str(out),
        "HPA_CLASSICAL": "1",
        "HPA_TTA": "none",
        "HPA_BATCH_SIZE": "32",
        "HPA_NUM_WORKERS": "0",
        "HPA_DEVICE": "cpu",
    }


# The inference notebook on a synthetic folder, installing hpa_kit offline from a wheels
# folder as on Kaggle, is tests/test_delivery.py::
# test_inference_notebook_installs_from_an_attached_wheels_dataset.


def test_inference_notebook_on_real_samples(
    jupyter_path, samples_dir, sample_ids, tiny_checkpoint, tmp_path
):
    from hpa_kit.io import read_channel

    ids = [sample_ids[2]]  # the 3072 x 3072 one (the synthetic test covers another size)
    rows = []
    for image_id in ids:
        height, width = read_channel(samples_dir / "images" / f"{image_id}_blue.png").shape
        rows.append({"ID": image_id, "ImageWidth": width, "ImageHeight": height,
                     "PredictionString": ""})  # fmt: skip
    sample = tmp_path / "sample_submission.csv"
    pd.DataFrame(rows).to_csv(sample, index=False)
    settings = _inference_settings(samples_dir / "images", sample, tiny_checkpoint, tmp_path)
    run_notebook("hpa-inference", settings, jupyter_path, tmp_path)
    submission = tmp_path / "submission.csv"
    df = pd.read_csv(submission).set_index("ID")
    assert sorted(df.index) == sorted(ids)
    assert all(len(df.loc[i, "PredictionString"].split()) >= 3 * 19 for i in ids)
    result = _validate(submission, sample)
    assert result.returncode == 0, result.stdout + result.stderr


def test_train_notebook_writes_a_checkpoint(jupyter_path, tmp_path):
    from hpa_kit.synth import write_dataset

    synth_dir = tmp_path / "synth"
    write_dataset(synth_dir, n=4, size=128, seed=5)  # 2 folds of 2 images
    settings = {
        "HPA_INPUT": str(tmp_path / "no-input"),
        "HPA_TRAIN_CSV": str(synth_dir / "train.csv"),
        "HPA_IMAGES": str(synth_dir / "images"),
        "HPA_OUT": str(tmp_path / "run"),
        "HPA_ARCH": TINY_ARCH,
        "HPA_PRETRAINED": "0",
        "HPA_INPUT_SIZE": "32",
        "HPA_EPOCHS": "1",
        "HPA_N_FOLDS": "2",
        "HPA_BATCH_SIZE": "2",
        "HPA_WORKERS": "0",
    }
    run_notebook("hpa-train", settings, jupyter_path, tmp_path)
    best = tmp_path / "run" / "best"
    assert (best / "model.pt").is_file()
    config = json.loads((best / "config.json").read_text())
    assert config["arch"] == TINY_ARCH and config["input_size"] == 32


def test_explore_notebook_draws_overlays(jupyter_path, synth_dir, tiny_checkpoint, tmp_path):
    settings = {
        "HPA_INPUT": str(tmp_path / "no-input"),
        "HPA_IMAGES": str(synth_dir / "images"),
        "HPA_OUT": str(tmp_path / "pictures"),
        "HPA_MODELS": str(tiny_checkpoint),
        "HPA_VIEW_SIZE": "256",
    }
    nb = run_notebook("hpa-explore", settings, jupyter_path, tmp_path)
    from hpa_kit.io import list_image_ids

    first = list_image_ids(synth_dir / "images")[0]
    assert (tmp_path / "pictures" / f"{first}_cells.png").is_file()
    assert (tmp_path / "pictures" / f"{first}_overlay.png").is_file()
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 4  # channels, composite, outlines, overlay
    assert "mean probability over cells" in outputs_text(nb)

"""Shared fixtures. Real sample images are found through HPA_KIT_SAMPLES (set by `make test`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

SAMPLE_IDS = (
    "000a6c98-bb9b-11e8-b2b9-ac1f6b6435d0",
    "a34d8680-bb99-11e8-b2b9-ac1f6b6435d0",
    "a7faf0b4-bb99-11e8-b2b9-ac1f6b6435d0",
    "b6a469d8-bbad-11e8-b2ba-ac1f6b6435d0",
)


def _samples_dir() -> Path | None:
    value = os.environ.get("HPA_KIT_SAMPLES")
    if not value:
        return None
    path = Path(value).resolve()  # absolute: some tests run code in another directory
    return path if (path / "images").is_dir() else None


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    """The shared real-sample folder (images/, masks/, train.csv, sample_submission.csv)."""
    path = _samples_dir()
    if path is None:
        pytest.skip("HPA_KIT_SAMPLES not set or not a sample folder (run through `make test`)")
    return path


@pytest.fixture(scope="session")
def sample_ids() -> tuple[str, ...]:
    return SAMPLE_IDS


# --- shared by the predict test modules: made once per test run ---


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """Two tiny random checkpoints: RGB at 32 px and RGBY at 48 px."""
    import torch

    from hpa_kit.model import ClassifierConfig, build_classifier, save_checkpoint

    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    paths = []
    rgb, rgby = ("red", "green", "blue"), ("red", "green", "blue", "yellow")
    for name, channels, size in (("rgb32", rgb, 32), ("rgby48", rgby, 48)):
        config = ClassifierConfig(arch="test_efficientnet", channels=channels, input_size=size)
        model = build_classifier(config.arch, config.in_chans, config.num_classes).eval()
        paths.append(save_checkpoint(root / name, model, config))
    return paths


@pytest.fixture(scope="session")
def synth(tmp_path_factory):
    """Three synthetic 256 px images and their sample submission (hpa_kit.synth)."""
    from hpa_kit.synth import write_dataset

    return write_dataset(tmp_path_factory.mktemp("synth"), n=3, size=256, seed=0, progress=False)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures(...)``): faster on
    a shared 2-core machine, and the same arithmetic for every run of the module."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

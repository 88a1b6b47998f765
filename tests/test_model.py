"""hpa_kit.model: checkpoints round trip; mismatches fail clearly."""

from __future__ import annotations

import json

import pytest
import torch

from hpa_kit.model import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    ClassifierConfig,
    build_classifier,
    load_classifier,
    read_config,
    save_checkpoint,
)

ARCH = "test_efficientnet"  # timm's ~0.1 M-parameter test network


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """One intra-op thread: on the shared 2-core machine, 2 threads are ~20x slower here."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("channels", [("red", "green", "blue"), ("red", "green", "blue", "yellow")])
def test_round_trip_identical_outputs(tmp_path, channels):
    torch.manual_seed(0)
    config = ClassifierConfig(
        arch=ARCH, channels=channels, input_size=32, fold=2, metrics={"f1": 0.5}
    )
    model = build_classifier(ARCH, config.in_chans, config.num_classes).eval()
    out = save_checkpoint(tmp_path / "ckpt", model, config)
    assert sorted(p.name for p in out.iterdir()) == sorted([CONFIG_FILE, WEIGHTS_FILE])
    loaded, loaded_config = load_classifier(out)
    assert loaded_config == config
    assert read_config(out / CONFIG_FILE) == config
    assert not loaded.training
    x = torch.randn(3, len(channels), 32, 40, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert loaded(x).shape == (3, 19)


def test_mismatched_channels_fail_clearly(tmp_path):
    config = ClassifierConfig(arch=ARCH, channels=("red", "green", "blue"), input_size=32)
    save_checkpoint(tmp_path, build_classifier(ARCH, 3), config)
    data = json.loads((tmp_path / CONFIG_FILE).read_text())
    data["channels"] = ["red", "green", "blue", "yellow"]
    data["mean"] = data["std"] = None
    (tmp_path / CONFIG_FILE).write_text(json.dumps(data))
    with pytest.raises(
        ValueError, match=r"do not fit test_efficientnet with 4 channels and 19 classes"
    ):
        load_classifier(tmp_path)


def test_mismatched_arch_and_classes_fail_clearly(tmp_path):
    config = ClassifierConfig(arch=ARCH, input_size=32)
    save_checkpoint(tmp_path, build_classifier(ARCH, 3), config)
    (tmp_path / CONFIG_FILE).write_text(json.dumps(config.replace(arch="test_resnet").to_dict()))
    with pytest.raises(ValueError, match="do not fit test_resnet"):
        load_classifier(tmp_path)
    fewer = config.replace(class_names=config.class_names[:5])
    (tmp_path / CONFIG_FILE).write_text(json.dumps(fewer.to_dict()))
    with pytest.raises(ValueError, match="5 classes"):
        load_classifier(tmp_path)


def test_missing_files_and_bad_config(tmp_path):
    with pytest.raises(FileNotFoundError, match=CONFIG_FILE):
        load_classifier(tmp_path)
    (tmp_path / CONFIG_FILE).write_text(json.dumps({"arch": ARCH}))
    with pytest.raises(FileNotFoundError, match=WEIGHTS_FILE):
        load_classifier(tmp_path)
    (tmp_path / CONFIG_FILE).write_text(json.dumps({"arch": ARCH, "colour": 1}))
    with pytest.raises(ValueError, match="unknown classifier config keys"):
        read_config(tmp_path)
    (tmp_path / CONFIG_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_config(tmp_path)


def test_config_checks_channels_and_normalisation_by_the_io_rules():
    config = ClassifierConfig(arch=ARCH, channels=["blue", "yellow"], std=(1, 2))
    assert config.channels == ("blue", "yellow")
    assert config.mean == (0.0539, 0.0810) and config.std == (1.0, 2.0)
    for kwargs, message in (
        ({"channels": ("red", "red")}, "distinct"),
        ({"channels": ("red", "cyan")}, "unknown channels"),
        ({"channels": ()}, "empty"),
        ({"channels": "red"}, "sequence of colour names"),
        ({"mean": (0.1, 0.2)}, "one value per channel"),
        ({"std": (0.1, 0.2, float("nan"))}, "positive"),
    ):
        with pytest.raises(ValueError, match=message):
            ClassifierConfig(arch=ARCH, **kwargs)

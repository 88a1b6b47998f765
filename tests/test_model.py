"""hpa_kit.model: checkpoints round trip; mismatches fail clearly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from hpa_kit.cli import main
from hpa_kit.errors import UsageError
from hpa_kit.labels import CLASS_NAMES
from hpa_kit.model import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    ClassifierConfig,
    MissingCheckpointError,
    build_classifier,
    load_classifier,
    read_config,
    save_checkpoint,
)
from hpa_kit.outputs import temp_path

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


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A valid checkpoint folder (RGB, 32 px) to copy and break."""
    torch.manual_seed(0)
    config = ClassifierConfig(arch=ARCH, input_size=32)
    return save_checkpoint(tmp_path_factory.mktemp("good"), build_classifier(ARCH, 3), config)


def _broken(good, tmp_path, name, content) -> Path:
    folder = tmp_path / "ckpt"
    shutil.copytree(good, folder)
    target = folder / name
    if content is None:
        target.unlink()
    elif isinstance(content, bytes):
        target.write_bytes(content)
    elif callable(content):
        target.unlink()
        content(target)
    else:
        target.write_text(json.dumps(content) if not isinstance(content, str) else content)
    return folder


_CONFIG = {"arch": ARCH, "input_size": 32}
BROKEN = [
    # (file, new content (None: removed), error class, message)
    (CONFIG_FILE, None, MissingCheckpointError, "no config.json"),
    (WEIGHTS_FILE, None, MissingCheckpointError, "no model.pt"),
    (CONFIG_FILE, "{not json", CheckpointError, "config.json is not valid JSON"),
    (CONFIG_FILE, b"\x89PNG\r\n\x1a\n\xff\xfe", CheckpointError, "config.json is not valid JSON"),
    (CONFIG_FILE, "[" * 100_000, CheckpointError, "config.json is not valid JSON"),
    (CONFIG_FILE, " " * (1 << 20) + "{}", CheckpointError, "larger than 1048576 bytes"),
    (CONFIG_FILE, [ARCH], CheckpointError, "config.json holds a JSON list, not an object"),
    (CONFIG_FILE, {"input_size": 32}, CheckpointError, "lacks 'arch'"),
    (CONFIG_FILE, {**_CONFIG, "colour": 1}, CheckpointError, "unknown classifier config keys"),
    (CONFIG_FILE, {**_CONFIG, "arch": 5}, CheckpointError, "arch must be the name"),
    (CONFIG_FILE, {**_CONFIG, "input_size": "big"}, CheckpointError, "not a classifier config"),
    (CONFIG_FILE, '{"arch": "x", "input_size": 1e400}', CheckpointError, "OverflowError"),
    (CONFIG_FILE, {**_CONFIG, "class_names": 5}, CheckpointError, "TypeError"),
    (CONFIG_FILE, {**_CONFIG, "channels": ["cyan"]}, CheckpointError, "unknown channels"),
    (CONFIG_FILE, lambda p: p.mkdir(), MissingCheckpointError, "no config.json"),
    (CONFIG_FILE, {**_CONFIG, "arch": "hf-hub:timm/resnet18.a1_in1k"}, CheckpointError,
     "without a source prefix (loading needs no network"),  # refused before timm is asked
    (CONFIG_FILE, {**_CONFIG, "arch": "../x"}, CheckpointError, "which timm cannot build"),
    (CONFIG_FILE, {**_CONFIG, "arch": "no_such_net"}, CheckpointError,
     "names architecture 'no_such_net', which timm cannot build"),
    (WEIGHTS_FILE, b"", CheckpointError, "model.pt cannot be read as a state dict"),
    (WEIGHTS_FILE, b"not a checkpoint\n", CheckpointError, "model.pt cannot be read"),
    (WEIGHTS_FILE, bytes(range(256)), CheckpointError, "model.pt cannot be read"),
    (WEIGHTS_FILE, lambda p: p.mkdir(), MissingCheckpointError, "no model.pt"),
    (WEIGHTS_FILE, lambda p: torch.save([1, 2], p), CheckpointError,
     "model.pt holds a list, not a state dict"),
    (WEIGHTS_FILE, lambda p: torch.save({"w": "text"}, p), CheckpointError,
     "model.pt is not a state dict (names -> tensors): its entry 'w' holds a str"),
    (WEIGHTS_FILE, lambda p: torch.save(torch.nn.Linear(2, 2), p), CheckpointError,
     "cannot be read as a state dict"),  # a pickled module: weights_only refuses it
    (WEIGHTS_FILE, lambda p: torch.save({"w": torch.zeros(2)}, p), CheckpointError,
     "weights do not fit test_efficientnet with 3 channels and 19 classes: "),
]  # fmt: skip


@pytest.mark.parametrize(("name", "content", "error", "message"), BROKEN)
def test_broken_checkpoints_raise_a_usage_error_naming_folder_and_cause(
    good, tmp_path, name, content, error, message
):
    folder = _broken(good, tmp_path, name, content)
    with pytest.raises(error) as info:
        load_classifier(folder)
    text = str(info.value)
    assert isinstance(info.value, UsageError) and info.value.exit_code == 2
    assert text.startswith(f"checkpoint {folder}") and message in text
    assert "\n" not in text and len(text) < 600  # one line, even for torch's long messages


@pytest.mark.parametrize("seed", range(8))
def test_cut_or_garbled_weights(good, tmp_path, seed):
    """A model.pt cut anywhere, or with bytes replaced, is a CheckpointError (torch.load
    itself raises RuntimeError, EOFError, KeyError, IndexError, UnpicklingError ...)."""
    rng = np.random.default_rng(seed)
    data = np.frombuffer((good / WEIGHTS_FILE).read_bytes(), np.uint8).copy()
    if seed % 2:
        cut = data[: rng.integers(1, data.size)].tobytes()
    else:
        data[rng.integers(0, data.size, size=8)] = rng.integers(0, 256, size=8, dtype=np.uint8)
        cut = data.tobytes()
    for content in (cut, b"truncated", b"\x80\x02}q\x00"[: 2 + seed % 4]):
        folder = _broken(good, tmp_path / str(len(content)), WEIGHTS_FILE, content)
        try:
            load_classifier(folder)
        except CheckpointError as exc:
            assert str(exc).startswith(f"checkpoint {folder}: ")


def test_missing_folder_and_wrong_shapes_say_which(tmp_path, good):
    with pytest.raises(MissingCheckpointError, match=f"checkpoint folder not found: {tmp_path}/x"):
        load_classifier(tmp_path / "x")
    fewer = ClassifierConfig(arch=ARCH, input_size=32, class_names=CLASS_NAMES[:5])
    folder = _broken(good, tmp_path, CONFIG_FILE, fewer.to_dict())
    with pytest.raises(CheckpointError) as info:
        load_classifier(folder)
    assert str(info.value).endswith(
        "weights do not fit test_efficientnet with 3 channels and 5 classes: 2 of another shape "
        "(classifier.weight: (19, 256) in the file, (5, 256) expected, "
        "classifier.bias: (19,) in the file, (5,) expected)"
    )


def test_predict_with_a_bad_checkpoint_folder_is_one_line_exit_2(synth, good, tmp_path, capsys):
    folder = _broken(good, tmp_path, WEIGHTS_FILE, b"truncated")
    out = tmp_path / "s.csv"
    argv = [
        "predict", "--images", str(synth.out / "images"), "--sample", str(synth.sample_submission),
        "--models", str(folder), "--out", str(out), "--classical", "--device", "cpu", "--quiet",
    ]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hpa-kit predict: cannot load the checkpoints: ")
    assert f"checkpoint {folder}: model.pt cannot be read" in err[0]
    assert not out.exists()


def test_save_checkpoint_removes_a_killed_saves_leftovers(good, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(good, folder)
    leftovers = [temp_path(folder / name, pid=2**22 + 1) for name in (WEIGHTS_FILE, CONFIG_FILE)]
    for path in leftovers:
        path.write_bytes(b"half")
    model, config = load_classifier(folder)
    save_checkpoint(folder, model, config)
    assert sorted(p.name for p in folder.iterdir()) == sorted([CONFIG_FILE, WEIGHTS_FILE])


def test_two_saves_of_the_same_weights_are_byte_identical(good, tmp_path):
    model, config = load_classifier(good)
    one, two = (
        save_checkpoint(tmp_path / "a", model, config),
        save_checkpoint(tmp_path / "b", model, config),
    )
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        assert (one / name).read_bytes() == (two / name).read_bytes(), name


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

"""`hpa-kit train` under misuse and hostile input: one line on stderr, the right exit code.

Exit 2 (usage, found before training, nothing written): a bad config or override, a table
with a bad label, missing or empty image files, an out_dir that already holds a run, a
resume whose config differs. Exit 1 (the work failed): an image that does not decode met
during training, a truncated or crafted ``last/train_state.pt``. Never a traceback.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from hpa_kit.cli import main as cli_main
from hpa_kit.dataset import SampleReadError
from hpa_kit.io import write_channels

SIZE = 16


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _make_data(root: Path, n: int = 8) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        image = rng.integers(0, 255, (SIZE, SIZE, 4), dtype=np.uint8)
        write_channels(root / "images", f"id{i}", image)
        rows.append((f"id{i}", str(i % 3), i % 2))
    pd.DataFrame(rows, columns=["ID", "Label", "fold"]).to_csv(root / "train.csv", index=False)
    return root


def _config_file(root: Path, out: Path, **changes) -> Path:
    config = {
        "train_csv": str(root / "train.csv"),
        "images_dir": str(root / "images"),
        "out_dir": str(out),
        "n_folds": 2,
        "arch": "test_resnet",
        "input_size": SIZE,
        "batch_size": 4,
        "epochs": 2,
        "workers": 0,
        "device": "cpu",
        "progress": False,
    }
    config.update(changes)
    path = root / f"config_{out.name}.json"
    path.write_text(json.dumps(config))
    return path


def _train(capsys, *args: str) -> tuple[int, str]:
    code = cli_main(["train", *args])
    err = capsys.readouterr().err
    return code, err


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and lines[0].startswith("hpa-kit train: "), err
    return lines[0]


@pytest.fixture
def data(tmp_path) -> Path:
    return _make_data(tmp_path / "data")


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory) -> tuple[Path, Path]:
    """A run interrupted after epoch 0 of 2 (``last/`` holds a resume point)."""
    root = _make_data(tmp_path_factory.mktemp("data"))
    out = root / "run"
    config = _config_file(root, out, stop_after_epochs=1)
    assert cli_main(["train", "--config", str(config)]) == 0
    assert (out / "last" / "train_state.pt").is_file()
    return root, out


def _copy_run(stopped_run, tmp_path) -> tuple[Path, Path]:
    root, out = stopped_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    return root, copy


# ---------------------------------------------------------------- usage errors (exit 2)


def test_out_dir_holding_a_run_is_refused_with_the_resume_hint(stopped_run, tmp_path, capsys):
    root, out = _copy_run(stopped_run, tmp_path)
    before = sorted(p.name for p in out.rglob("*"))
    code, err = _train(capsys, "--config", str(_config_file(root, out)))
    line = _one_line(err)
    assert code == 2 and str(out) in line and "--resume" in line and "another out_dir" in line
    assert sorted(p.name for p in out.rglob("*")) == before


def test_out_dir_that_is_a_file_is_refused(data, capsys):
    (data / "taken").write_text("mine")
    code, err = _train(capsys, "--config", str(_config_file(data, data / "taken")))
    assert code == 2 and "is not a folder" in _one_line(err)
    assert (data / "taken").read_text() == "mine"


def test_out_dir_that_cannot_be_written_is_refused_before_training(data, capsys):
    (data / "file").write_text("mine")
    code, err = _train(capsys, "--config", str(_config_file(data, data / "file" / "run")))
    assert code == 2 and "is not a folder" in _one_line(err)
    # /proc refuses new files even for root (permission bits would not)
    code, err = _train(capsys, "--config", str(_config_file(data, Path("/proc/hpa-kit-run"))))
    line = _one_line(err)
    assert code == 2 and "cannot write in the folder of out_dir: /proc" in line


def test_a_run_leaves_no_temporary_files(stopped_run):
    _, out = stopped_run
    names = [p.name for p in out.rglob("*")]
    assert "train_state.pt" in names and "log.jsonl" in names
    assert not [n for n in names if "tmp" in n], names


def test_missing_and_empty_image_files_are_named_before_training(data, capsys):
    (data / "images" / "id3_green.png").unlink()
    (data / "images" / "id5_red.png").write_bytes(b"")
    out = data / "out"
    code, err = _train(capsys, "--config", str(_config_file(data, out)))
    line = _one_line(err)
    assert code == 2 and "2 of 8 images" in line
    assert "id3: no green channel PNG" in line and "id5: empty file id5_red.png" in line
    assert not out.exists()


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["lr=fast"], "lr must be a number"),
        (["epochs=0"], "epochs must be an int >= 1"),
        (["epochs=2.5"], "epochs must be an int >= 1"),
        (["lr=nan"], "lr must be finite"),
        (["batchsize=4"], "unknown TrainConfig keys ['batchsize']"),
        (["fold=3"], "fold must be in 0..1"),
        (["seed=-1"], "seed must be an int >= 0"),
        (["channels=[red, pink]"], "channels"),
        (["lr"], "key=value"),
        (["channels=[red"], "not valid YAML"),
        (["cell_learning=mil"], "cell_learning must be one of"),
        (["pooling=attention"], "pooling must be one of"),
        (["pool_temperature=0"], "pool_temperature must be > 0"),
        (["refine_rounds=0"], "refine_rounds must be an int >= 1"),
        (["refine_floor=2"], "refine_floor must be in [0, 1]"),
        (["refine_from=refined"], "refine_from must be one of"),
        (["cell_learning=bags", "soft_labels=s.csv"], "soft_labels trains rows"),
        (["bags_per_batch=0"], "bags_per_batch must be None or an int >= 1"),
    ],
)
def test_bad_config_values_are_usage_errors(data, capsys, overrides, expected):
    config = _config_file(data, data / "out")
    args = ["--config", str(config)]
    for item in overrides:
        args += ["--set", item]
    code, err = _train(capsys, *args)
    assert code == 2 and expected in _one_line(err)
    assert not (data / "out").exists()


def test_bad_config_files_are_usage_errors(data, capsys):
    code, err = _train(capsys, "--config", str(data))  # a folder
    assert code == 2 and "is not a file" in _one_line(err)
    binary = data / "c.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    code, err = _train(capsys, "--config", str(binary))
    assert code == 2 and str(binary) in _one_line(err)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda df: df.assign(Label=["1|x"] + list(df["Label"][1:])), "image id 'id0'"),
        (lambda df: df.drop(columns="Label"), "lacks a 'Label' column"),
        (lambda df: df.assign(fold=[0] * 8), "leaves 0 training and 8 validation rows"),
        (lambda df: df.assign(fold=[5] * 8), "fold values must be in 0..1"),
        (lambda df: df.iloc[:0], "has no rows"),
    ],
)
def test_bad_tables_are_named(data, capsys, edit, expected):
    csv = data / "train.csv"
    edit(pd.read_csv(csv, dtype={"ID": str})).to_csv(csv, index=False)
    code, err = _train(capsys, "--config", str(_config_file(data, data / "out")))
    line = _one_line(err)
    assert code == 2 and expected in line and str(csv) in line


def test_resume_with_another_config_is_refused(stopped_run, tmp_path, capsys):
    root, out = _copy_run(stopped_run, tmp_path)
    config = _config_file(root, out, lr=0.5)
    code, err = _train(capsys, "--config", str(config), "--resume")
    line = _one_line(err)
    assert code == 2 and "lr: 0.0006 -> 0.5" in line and "train_state.pt" in line


# ---------------------------------------------------------------- run errors (exit 1)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize(
    "content",
    [
        pytest.param("truncate", id="truncated"),
        pytest.param(b"", id="empty"),
        pytest.param(b"\x00" * 100, id="zeros"),
        pytest.param("pickle", id="crafted-pickle"),
        pytest.param("not-a-state", id="other-dict"),
    ],
)
def test_bad_train_state_is_one_line_naming_the_file(stopped_run, tmp_path, capsys, content):
    root, out = _copy_run(stopped_run, tmp_path)
    state = out / "last" / "train_state.pt"
    marker = tmp_path / "executed"
    if content == "truncate":
        data = state.read_bytes()
        state.write_bytes(data[: len(data) // 2])
    elif content == "pickle":  # would create `marker` if unpickled with weights_only=False
        state.write_bytes(pickle.dumps(_Crafted(str(marker))))
    elif content == "not-a-state":
        torch.save({"epoch": 0}, state)
    else:
        state.write_bytes(content)
    code, err = _train(capsys, "--config", str(_config_file(root, out)), "--resume")
    line = _one_line(err)
    assert code == 1 and str(state) in line, line
    assert not marker.exists()


class _Crafted:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_image_in_epoch_0_stops_with_its_id(data, capsys, workers):
    (data / "images" / "id2_blue.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = data / "out"
    code, err = _train(capsys, "--config", str(_config_file(data, out, workers=workers)))
    line = _one_line(err)
    assert code == 1 and "training stopped in epoch 0" in line, line
    assert "image id 'id2'" in line and "id2_blue.png" in line and "run again" in line
    assert "--resume" not in line


def test_corrupt_image_later_says_what_is_saved_and_resumes(stopped_run, tmp_path, capsys):
    root, out = _copy_run(stopped_run, tmp_path)
    images = tmp_path / "images"
    shutil.copytree(root / "images", images)
    good = (images / "id6_red.png").read_bytes()
    (images / "id6_red.png").write_bytes(good[:40])  # truncated PNG
    config = _config_file(root, out, images_dir=str(images))  # images_dir may change on resume
    code, err = _train(capsys, "--config", str(config), "--resume")
    line = _one_line(err)
    assert code == 1 and "training stopped in epoch 1" in line and "image id 'id6'" in line, line
    assert "epochs 0-0 are saved" in line and "--resume" in line
    (images / "id6_red.png").write_bytes(good)
    assert cli_main(["train", "--config", str(config), "--resume"]) == 0
    rows = (out / "log.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [0, 1]


def test_read_error_survives_the_dataloader_worker_text():
    text = (
        "Caught SampleReadError in DataLoader worker process 0.\nOriginal Traceback (most "
        "recent call last):\n  File ...\nhpa_kit.dataset.SampleReadError: cannot read image id "
        "'a_b' from /data/x: CorruptImageError: cannot decode /data/x/a_b_red.png"
    )
    error = SampleReadError(text)
    assert (error.image_id, error.folder) == ("a_b", "/data/x")
    assert str(error) == (
        "cannot read image id 'a_b' from /data/x: CorruptImageError: cannot decode "
        "/data/x/a_b_red.png"
    )
    again = pickle.loads(pickle.dumps(error))
    assert str(again) == str(error) and again.image_id == "a_b"

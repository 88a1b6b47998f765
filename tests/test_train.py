"""hpa_kit.train: config, schedule, metrics, fit() on a tiny learnable set, resume, DDP, CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from hpa_kit.cli import main as cli_main
from hpa_kit.errors import UsageError
from hpa_kit.io import write_channels
from hpa_kit.model import load_classifier
from hpa_kit.train import TrainConfig, build_loss, cosine_lambda, f1_scores, fit, split_fold

REPO = Path(__file__).resolve().parents[1]
SIZE = 32
PATTERNS = ("0", "1", "2", "0|2")  # class c present <=> channel c bright


def _make_set(root: Path, n: int = 32) -> Path:
    """A learnable set: the label says which of red/green/blue are bright (flip/rotation-proof)."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        label = PATTERNS[i % 4]
        image = rng.integers(0, 40, (SIZE, SIZE, 4), dtype=np.uint8)
        for c in map(int, label.split("|")):
            image[:, :, c] += 150
        write_channels(root / "images", f"id{i:03d}", image)
        rows.append((f"id{i:03d}", label, (i // 4) % 4))
    csv = root / "train.csv"
    pd.DataFrame(rows, columns=["ID", "Label", "fold"]).to_csv(csv, index=False)
    return csv


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    _make_set(root)
    return root


def _config(data: Path, out: Path, **changes) -> TrainConfig:
    base = dict(
        train_csv=str(data / "train.csv"),
        images_dir=str(data / "images"),
        out_dir=str(out),
        n_folds=4,
        arch="test_resnet",
        input_size=SIZE,
        batch_size=8,
        lr=3e-3,
        epochs=4,
        warmup_steps=1,
        workers=0,
        progress=False,
    )
    base.update(changes)
    return TrainConfig(**base)


def _log(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("elapsed_s")
    return rows


@pytest.fixture(scope="module")
def full_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "full"
    return fit(_config(data, out)), out


# ---------------------------------------------------------------- pure pieces


def test_defaults_are_the_seed_recipe():
    cfg = TrainConfig(train_csv="t.csv", images_dir="i", out_dir="o")
    assert (cfg.arch, cfg.batch_size, cfg.lr, cfg.weight_decay, cfg.epochs, cfg.seed) == (
        "efficientnet_b0",
        16,
        6e-4,
        1e-5,
        5,
        0,
    )
    assert cfg.channels == ("red", "green", "blue") and cfg.pretrained is False
    assert (cfg.monitor, cfg.mode, cfg.threshold, cfg.n_folds) == ("val_loss", "min", 0.5, 5)
    loss = build_loss(cfg)
    assert float(loss.alpha) == 0.5 and float(loss.gamma) == 0.0


def test_mixed_focal_variant():
    cfg = TrainConfig(
        train_csv="t",
        images_dir="i",
        out_dir="o",
        loss="focal",
        class_alpha={"1": 0.25, 11: 0.25},
        class_gamma={1: 1.5, 11: 1.5},
    )
    loss = build_loss(cfg)
    assert loss.alpha.tolist()[:2] == [0.5, 0.25] and loss.alpha[11] == 0.25
    assert loss.gamma[1] == 1.5 and loss.gamma[0] == 0.0


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"fold": 5}, "fold"),
        ({"loss": "bce", "alpha": 0.75}, "loss 'bce'"),
        ({"loss": "hinge"}, "loss"),
        ({"monitor": "auc"}, "monitor"),
        ({"channels": ("red", "pink")}, "channels"),
        ({"mean": (0.1, 0.1)}, "one value per channel"),
        ({"limit_train": 0}, "limit_train"),
        ({"limit_train": 1.5}, "limit_train"),
        ({"batch_size": 0}, "batch_size"),
        ({"lr": "fast"}, "lr"),
        ({"class_alpha": {19: 0.1}, "loss": "focal"}, "out of range"),
    ],
)
def test_config_rejects(changes, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(train_csv="t", images_dir="i", out_dir="o", **changes)


def test_from_file_yaml_json_and_overrides(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text(
        "train_csv: t.csv\nimages_dir: img\nout_dir: out\nlr: 6e-4\nchannels: 4\n"
        "loss: focal\nclass_alpha: {1: 0.25}\n"
    )
    cfg = TrainConfig.from_file(yaml_file, overrides=["fold=2", "lr=1e-3", "clip_grad_norm=1"])
    assert cfg.lr == 1e-3 and cfg.fold == 2 and cfg.clip_grad_norm == 1.0
    assert cfg.channels == ("red", "green", "blue", "yellow") and cfg.class_alpha == {1: 0.25}
    assert TrainConfig.from_file(yaml_file).lr == 6e-4  # "6e-4" is a str to PyYAML
    assert (cfg.cell_learning, cfg.pooling, cfg.refine_rounds) == ("image-labels", "lse", 2)
    weak = TrainConfig.from_file(
        yaml_file, overrides=["cell_learning=refined", "refine_rounds=3", "pooling=max"]
    )
    assert (weak.cell_learning, weak.refine_rounds, weak.pooling) == ("refined", 3, "max")
    assert TrainConfig.from_dict(weak.to_dict()) == weak
    json_file = tmp_path / "c.json"
    json_file.write_text(json.dumps(cfg.to_dict()))
    assert TrainConfig.from_file(json_file) == cfg
    (tmp_path / "bad.yaml").write_text("train_csv: t\nimages_dir: i\nout_dir: o\nbatchsize: 4\n")
    with pytest.raises(ValueError, match="unknown TrainConfig keys \\['batchsize'\\]"):
        TrainConfig.from_file(tmp_path / "bad.yaml")
    with pytest.raises(ValueError, match="key=value"):
        TrainConfig.from_file(yaml_file, overrides=["lr"])


def test_cosine_schedule_with_warmup():
    f = cosine_lambda(10, warmup_steps=2)
    assert [f(s) for s in (0, 1)] == [0.5, 1.0]
    assert f(2) == 1.0 and math.isclose(f(6), 0.5) and math.isclose(f(10), 0.0, abs_tol=1e-12)
    g = cosine_lambda(4, min_ratio=0.1)
    assert g(0) == 1.0 and math.isclose(g(4), 0.1)


def test_f1_scores_literal():
    probs = np.array([[0.9, 0.2, 0.0], [0.6, 0.7, 0.0], [0.1, 0.5, 0.0]])
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]])
    out = f1_scores(probs, targets)
    # class 0: TP 1 FP 1 FN 1 -> 0.5; class 1: TP 2 (0.5 counts) -> 1.0; class 2: no data
    assert out["per_class_f1"] == [0.5, 1.0, None]
    assert out["macro_f1"] == 0.75 and out["classes_in_val"] == 2
    assert out["micro_f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    # a class never present but predicted scores 0 and does not enter the macro mean
    assert f1_scores(np.array([[0.9]]), np.array([[0]]))["per_class_f1"] == [0.0]
    assert f1_scores(np.array([[0.9]]), np.array([[0]]))["macro_f1"] is None


def test_split_fold_uses_the_fold_column_and_limits(data, tmp_path):
    train_df, val_df = split_fold(_config(data, tmp_path / "o", fold=1))
    assert len(train_df) == 24 and len(val_df) == 8
    assert set(val_df["ID"]) == {f"id{i:03d}" for i in (4, 5, 6, 7, 20, 21, 22, 23)}
    small_train, small_val = split_fold(_config(data, tmp_path / "o", limit_train=0.5, limit_val=3))
    assert len(small_train) == 12 and len(small_val) == 3
    # without the column: hpa_kit.folds.make_folds
    df = pd.read_csv(data / "train.csv").drop(columns="fold")
    df.to_csv(tmp_path / "nofold.csv", index=False)
    tr, va = split_fold(_config(data, tmp_path / "o", train_csv=str(tmp_path / "nofold.csv")))
    assert len(tr) + len(va) == 32 and not set(tr["ID"]) & set(va["ID"])


# ---------------------------------------------------------------- fit


def test_fit_learns_and_writes_checkpoints(full_run, data):
    result, out = full_run
    rows = _log(out)
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3] and result.finished
    assert rows[-1]["train_loss"] < 0.8 * rows[0]["train_loss"]
    assert rows[-1]["val_loss"] < rows[0]["val_loss"]
    assert rows[-1]["macro_f1"] >= 0.8 and rows[-1]["classes_in_val"] == 3
    assert len(rows[0]["per_class_f1"]) == 19
    assert rows[0]["lr"] == pytest.approx(3e-3 / 1)  # warm-up step 0 of 1 -> full lr
    best = [r["epoch"] for r in rows if r["best"]]
    assert result.best_epoch == best[-1]
    assert result.best_score == min(r["val_loss"] for r in rows)
    for name in ("best", "last"):
        assert (out / name / "model.pt").is_file() and (out / name / "config.json").is_file()
    assert (out / "last" / "train_state.pt").is_file()
    assert not (out / "best" / "train_state.pt").exists()
    assert json.loads((out / "train_config.json").read_text())["arch"] == "test_resnet"


def test_checkpoint_loads_and_reproduces_validation(full_run, data):
    """The predictor's loader + the config's own preprocessing give the logged val loss."""
    from hpa_kit.augment import val_transform
    from hpa_kit.dataset import HPADataset
    from hpa_kit.losses import focal_loss

    result, out = full_run
    model, config = load_classifier(out / "last")
    assert (config.arch, config.channels, config.input_size, config.fold) == (
        "test_resnet",
        ("red", "green", "blue"),
        SIZE,
        0,
    )
    assert config.metrics["epoch"] == 3 and config.metrics["monitor"] == "val_loss"
    _, val_df = split_fold(_config(data, out))
    transform = val_transform(
        config.input_size, channels=config.channels, mean=config.mean, std=config.std
    )
    ds = HPADataset(val_df, data / "images", channels=config.channels, transform=transform)
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    targets = torch.stack([ds[i][1] for i in range(len(ds))])
    with torch.no_grad():
        logits = model(images)
    assert logits.shape == (8, 19)
    loss = float(focal_loss(logits, targets, alpha=0.5, gamma=0.0))
    assert loss == pytest.approx(_log(out)[-1]["val_loss"], rel=1e-5)
    probs = torch.sigmoid(logits)
    assert torch.all((probs[:, :3] >= 0.5) == (targets[:, :3] == 1))


def test_interrupt_and_resume_reproduce_the_run_exactly(full_run, data, tmp_path):
    _, full_out = full_run
    out = tmp_path / "resumed"
    first = fit(_config(data, out, stop_after_epochs=2))
    assert not first.finished and first.epochs_done == 2
    assert len(_log(out)) == 2
    with pytest.raises(UsageError, match="--resume"):
        fit(_config(data, out))
    with pytest.raises(UsageError, match="lr"):
        fit(_config(data, out, resume=True, lr=1e-3))
    (out / "log.jsonl").unlink()  # e.g. lost in a crash: train_state.pt carries the rows
    second = fit(_config(data, out, resume=True, workers=1))  # workers may change
    assert second.finished and second.epochs_done == 4
    assert _log(out) == _log(full_out)
    a = torch.load(out / "last" / "model.pt", weights_only=True)
    b = torch.load(full_out / "last" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_accumulation_clipping_and_focal_run(data, tmp_path):
    # 24 rows / batch 4 = 6 micro-batches; accumulation 4 -> groups of 4 and 2 = 2 steps/epoch
    cfg = _config(
        data,
        tmp_path / "acc",
        epochs=2,
        batch_size=4,
        accumulation=4,
        clip_grad_norm=0.5,
        loss="focal",
        alpha=0.75,
        class_gamma={1: 1.5},
        monitor="macro_f1",
    )
    result = fit(cfg)
    state = torch.load(tmp_path / "acc" / "last" / "train_state.pt", weights_only=False)
    assert state["scheduler"]["last_epoch"] == 4  # optimizer steps taken
    assert state["epoch"] == 1 and len(state["history"]) == 2
    rows = _log(tmp_path / "acc")
    assert all(math.isfinite(r["val_loss"]) for r in rows)
    scores = [r["macro_f1"] for r in rows]
    assert result.best_score == max(scores) and result.best_epoch == scores.index(max(scores))


def test_missing_images_are_listed_before_training(data, tmp_path):
    df = pd.read_csv(data / "train.csv")
    df.loc[len(df)] = ["ghost", "3", 0]
    df.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(UsageError, match="1 of 33 images.*ghost"):
        fit(_config(data, tmp_path / "o", train_csv=str(tmp_path / "t.csv")))
    assert not (tmp_path / "o").exists()


def test_cli_print_config(tmp_path, capsys):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("train_csv: t.csv\nimages_dir: img\nout_dir: out\n")
    assert cli_main(["train", "--config", str(cfg_file), "--set", "lr=1e-3", "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["lr"] == 1e-3 and printed["arch"] == "efficientnet_b0"
    assert cli_main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2


def test_two_process_ddp_with_gloo(data, tmp_path):
    out = tmp_path / "ddp"
    cfg = _config(data, out, epochs=2, batch_size=4, warmup_steps=0).to_dict()
    cfg["device"] = "cpu"
    cfg_file = tmp_path / "ddp.json"
    cfg_file.write_text(json.dumps(cfg))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), NO_ALBUMENTATIONS_UPDATE="1")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "hpa_kit.cli",
        "train",
        "--config",
        str(cfg_file),
    ]
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # only rank 0 prints and writes: one line per epoch, one final message, one log
    assert done.stdout.count("epoch 0:") == 1 and done.stdout.count("epoch 1:") == 1
    assert done.stdout.count("hpa-kit train: finished") == 1
    rows = _log(out)
    assert [r["epoch"] for r in rows] == [0, 1] and rows[-1]["classes_in_val"] == 3
    assert sorted(p.name for p in out.iterdir()) == [
        "best",
        "last",
        "log.jsonl",
        "train_config.json",
    ]
    model, config = load_classifier(out / "best")
    assert config.fold == 0 and model(torch.zeros(1, 3, SIZE, SIZE)).shape == (1, 19)

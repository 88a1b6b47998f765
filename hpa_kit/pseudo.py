"""Pseudo-label refinement: per-cell soft labels from a trained model, inside the image's labels.

A training table of cell crops (``ID``, ``Label`` = the image's labels, and a column naming
each crop's image, ``image`` by default) teaches every crop all of its image's classes,
although most cells carry only some of them. A model trained that way (or by bag training,
:mod:`hpa_kit.mil`) still ranks the cells of an image: the cells that show a class score
higher for it. :func:`refine_labels` turns those scores into soft labels, and a new round of
crop training learns from them.

The rule (:func:`refine_labels`), for cell ``i`` of image ``b`` and class ``c``, with
``p[i, c]`` the model's sigmoid probability:

- ``c`` not among the image's labels: ``0``. A cell never gets a class its image lacks.
- a negative image (its labels hold class 18, ``Negative``): every cell keeps the image's
  labels exactly (a negative image stays negative).
- otherwise, two normalisations and a floor:

  1. per class over the image's cells: ``r[i, c] = p[i, c] / max_j p[j, c]``: the most
     confident cell of each class keeps the full label, the others the fraction of it they
     reach. The label then depends on how a cell ranks among its image's cells, not on the
     model's calibration (a class the model under-predicts everywhere still keeps its best
     cells at 1);
  2. per cell over the image's classes: ``s[i, c] = r[i, c] / max_k r[i, k]``: every cell
     keeps at least one of its image's classes at 1 (a cell carries some of its image's
     labels), so the cells of a one-class image keep that class exactly;
  3. ``floor + (1 - floor) * s[i, c]``: ``floor`` keeps some of the image label for every
     cell (``floor = 1`` gives the image labels back).

  When no cell of an image scores above 0 for a class, ``r`` is 1 for all its cells.

Soft labels are stored as a CSV (:func:`write_soft_labels`): ``ID``, the bag column, ``Label``
and one column per class named ``0`` .. ``18``; ``TrainConfig(soft_labels=...)`` trains on
them (:class:`hpa_kit.dataset.HPADataset` ``targets``).

:func:`fit_refined` runs ``cell_learning: refined``: ``refine_from`` (``bags`` or
``image-labels``) into ``out_dir/stage0``, then ``refine_rounds`` rounds: soft labels from
the previous stage's ``best/`` into ``out_dir/round{k}/soft_labels.csv`` and crop training on
them (from scratch, same recipe) into ``out_dir/round{k}``; the last round's ``best/`` and
``last/`` checkpoints are copied to ``out_dir/best`` and ``out_dir/last`` (the predictor's
format: a refined model is a per-cell classifier like any other).

>>> import numpy as np
>>> probs = np.array([[0.8, 0.1, 0.0], [0.2, 0.6, 0.0], [0.3, 0.0, 0.9]])
>>> image = np.array([[1, 1, 0], [0, 0, 1]])   # image 0: classes 0 and 1; image 1: class 2
>>> refine_labels(probs, image, np.array([0, 0, 1]), floor=0.0).astype(float).round(3).tolist()
[[1.0, 0.167, 0.0], [0.25, 1.0, 0.0], [0.0, 0.0, 1.0]]
>>> refine_labels(probs * [1, 0.5, 1], image, np.array([0, 0, 1])).round(3).tolist()[1]
[0.25, 1.0, 0.0]
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hpa_kit.errors import UsageError
from hpa_kit.labels import NEGATIVE, NUM_CLASSES
from hpa_kit.outputs import atomic_path

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from hpa_kit._train_config import TrainConfig
    from hpa_kit._train_dist import Dist
    from hpa_kit.train import TrainResult

__all__ = [
    "SOFT_FILE",
    "class_columns",
    "fit_refined",
    "read_soft_labels",
    "refine_labels",
    "row_probabilities",
    "soft_labels_of",
    "stage_configs",
    "write_soft_labels",
]

SOFT_FILE = "soft_labels.csv"


def class_columns() -> list[str]:
    """The soft-label CSV's class columns: ``["0", "1", ..., "18"]``."""
    return [str(c) for c in range(NUM_CLASSES)]


def refine_labels(
    probs: np.ndarray, image_targets: np.ndarray, bags: np.ndarray, *, floor: float = 0.0
) -> np.ndarray:
    """Soft labels ``(cells, C)`` from cell ``probs`` ``(cells, C)`` in ``[0, 1]``, the multi-hot
    labels of each image ``image_targets`` ``(images, C)`` and the image of each cell
    ``bags`` ``(cells,)`` (values ``0 .. images - 1``). See the module docstring for the rule.

    The result is 0 wherever the cell's image lacks the class, and lies in ``[floor, 1]``
    where it has it.
    """
    probs = np.asarray(probs, dtype=np.float64)
    image_targets = np.asarray(image_targets) > 0.5
    bags = np.asarray(bags, dtype=np.int64)
    _check_inputs(probs, image_targets, bags, floor)
    peak = np.zeros(image_targets.shape, dtype=np.float64)
    np.maximum.at(peak, bags, probs)
    peak_of_cell = peak[bags]
    allowed = image_targets[bags]
    ratio = np.divide(probs, peak_of_cell, out=np.ones_like(probs), where=peak_of_cell > 0)
    ratio = np.where(allowed, np.clip(ratio, 0.0, 1.0), 0.0)
    top = ratio.max(axis=1, keepdims=True)
    share = np.divide(ratio, top, out=allowed.astype(np.float64), where=top > 0)
    soft = np.where(allowed, floor + (1.0 - floor) * share, 0.0)
    if image_targets.shape[1] > NEGATIVE:
        negative = image_targets[:, NEGATIVE][bags]
        soft[negative] = allowed[negative]
    return soft.astype(np.float32)


def _check_inputs(probs, image_targets, bags, floor: float) -> None:
    if probs.ndim != 2 or image_targets.ndim != 2 or probs.shape[1] != image_targets.shape[1]:
        raise ValueError(
            f"probs (cells, C) and image_targets (images, C) must share C, got {probs.shape} "
            f"and {image_targets.shape}"
        )
    if bags.shape != (probs.shape[0],):
        raise ValueError(f"bags must be one image index per cell, got shape {bags.shape}")
    if len(bags) and (bags.min() < 0 or bags.max() >= len(image_targets)):
        raise ValueError(f"bag indices must lie in 0..{len(image_targets) - 1}")
    if not np.all((probs >= 0) & (probs <= 1)):
        raise ValueError("probs must lie in [0, 1]")
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"floor must be in [0, 1], got {floor}")


# ---------------------------------------------------------------- the CSV


def write_soft_labels(path: str | Path, table: pd.DataFrame, soft: np.ndarray) -> Path:
    """Write ``table``'s ``ID`` (and its other columns but ``fold``) beside ``soft``'s columns
    ``0`` .. ``18`` (atomic: a ``.tmp`` file renamed)."""
    path = Path(path)
    out = table.drop(columns=[c for c in ("fold",) if c in table.columns]).reset_index(drop=True)
    for c, column in enumerate(class_columns()):
        out[column] = np.round(soft[:, c].astype(np.float64), 6)
    with atomic_path(path) as temp:
        out.to_csv(temp, index=False)
    return path


def read_soft_labels(path: str | Path) -> pd.DataFrame:
    """The ``(ids, 19)`` float table of a soft-label CSV, indexed by ``ID``.

    Raises :class:`~hpa_kit.errors.UsageError` naming the file for a missing file, a missing
    class column, duplicate ids or values outside ``[0, 1]``.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"soft_labels {path} does not exist")
    try:
        table = pd.read_csv(path, dtype={"ID": str})
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise UsageError(f"soft_labels {path} is not a readable CSV: {exc}") from exc
    columns = class_columns()
    lacking = [c for c in ["ID", *columns] if c not in table.columns]
    if lacking:
        raise UsageError(f"soft_labels {path} lacks the columns {lacking}")
    if table["ID"].duplicated().any():
        raise UsageError(
            f"soft_labels {path}: id {table['ID'][table['ID'].duplicated()].iloc[0]!r} "
            "appears twice"
        )
    values = table[columns].apply(pd.to_numeric, errors="coerce")
    bad = ~((values >= 0) & (values <= 1)).all(axis=1)
    if bad.any():
        raise UsageError(
            f"soft_labels {path}: id {table['ID'][bad].iloc[0]!r} has a value outside [0, 1]"
        )
    return values.set_axis(table["ID"]).astype(np.float32)


# ---------------------------------------------------------------- model scores


def row_probabilities(
    checkpoint: str | Path, config: TrainConfig, df: pd.DataFrame, *, device
) -> np.ndarray:
    """Sigmoid probabilities ``(len(df), 19)`` of a checkpoint on the rows of ``df``
    (validation transform: no augmentation; images read as ``config`` reads them)."""
    import torch

    from hpa_kit.dataset import HPADataset
    from hpa_kit.model import load_classifier

    model, classifier_config = load_classifier(checkpoint, device=device)
    rows = HPADataset.for_config(
        df,
        config.images_dir,
        classifier_config,
        train=False,
        read_size=config.read_size,
        cache_dir=config.cache_dir,
    )
    loader = torch.utils.data.DataLoader(
        rows, batch_size=config.val_batch_size or config.batch_size, num_workers=config.workers
    )
    use_amp = bool(config.amp) and torch.device(device).type == "cuda"
    parts = []
    with torch.no_grad():
        for images, _ in loader:
            with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=use_amp):
                logits = model(images.to(device))
            parts.append(torch.sigmoid(logits.float()).cpu())
    return torch.cat(parts).numpy() if parts else np.zeros((0, NUM_CLASSES), np.float32)


def soft_labels_of(
    checkpoint: str | Path, config: TrainConfig, *, device
) -> tuple[Any, np.ndarray]:
    """``(table, soft labels)`` for the rows of ``config``'s fold split (training and
    validation rows), from the checkpoint's scores (:func:`refine_labels`)."""
    import pandas as pd

    from hpa_kit.dataset import bag_groups
    from hpa_kit.labels import parse_labels
    from hpa_kit.train import split_fold

    train_df, val_df = split_fold(config)
    table = pd.concat([train_df, val_df], ignore_index=True)
    groups = bag_groups(table[config.bag_column].tolist())
    bags = np.zeros(len(table), dtype=np.int64)
    for b, rows in enumerate(groups):
        bags[rows] = b
    row_targets = np.stack([parse_labels(t) for t in table["Label"]])
    image_targets = np.zeros((len(groups), NUM_CLASSES), dtype=np.float32)
    np.maximum.at(image_targets, bags, row_targets)
    probs = row_probabilities(checkpoint, config, table, device=device)
    return table, refine_labels(probs, image_targets, bags, floor=config.refine_floor)


# ---------------------------------------------------------------- cell_learning: refined


def stage_configs(config: TrainConfig) -> list[tuple[str, TrainConfig]]:
    """``[(name, config), ...]`` of a refined run: ``stage0`` then ``round1`` .. ``roundK``."""
    out = Path(config.out_dir)
    stages = [
        ("stage0", config.replace(cell_learning=config.refine_from, out_dir=str(out / "stage0")))
    ]
    for k in range(1, config.refine_rounds + 1):
        folder = out / f"round{k}"
        stages.append(
            (
                f"round{k}",
                config.replace(
                    cell_learning="image-labels",
                    out_dir=str(folder),
                    soft_labels=str(folder / SOFT_FILE),
                ),
            )
        )
    return stages


def fit_refined(config: TrainConfig, dist_info: Dist) -> TrainResult:
    """Run ``cell_learning: refined`` (see the module docstring); only rank 0 writes.

    ``stop_after_epochs`` counts epochs over all stages; ``resume`` continues each stage
    where it stopped (a finished stage is not trained again; soft labels already written
    are reused).
    """
    from hpa_kit.train import TrainResult, _fit, _write_config, _write_log

    out = Path(config.out_dir)
    _check_refined(config)
    if dist_info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        _write_config(out, config)
    budget, ran = config.stop_after_epochs, 0
    history: list[dict[str, Any]] = []
    result: TrainResult | None = None
    for name, stage in stage_configs(config):
        left = None if budget is None else budget - ran
        if left == 0:
            break
        if result is not None and not Path(stage.soft_labels).is_file():
            if dist_info.is_main:  # from the previous stage's best checkpoint
                table, soft = soft_labels_of(result.best_dir, stage, device=dist_info.device)
                write_soft_labels(stage.soft_labels, table, soft)
            dist_info.barrier()
        resume = config.resume and (Path(stage.out_dir) / "last").exists()
        result = _fit(stage.replace(resume=resume, stop_after_epochs=left), dist_info)
        history += [{**row, "stage": name} for row in result.history]
        ran += result.epochs_this_call
        if not result.finished:
            break
    finished = result.finished and name == f"round{config.refine_rounds}"
    if dist_info.is_main:
        if finished:
            for which in ("best", "last"):
                _copy_checkpoint(Path(result.out_dir) / which, out / which)
        _write_log(out / "log.jsonl", history)
    dist_info.barrier()
    return TrainResult(
        out_dir=out,
        best_dir=out / "best",
        last_dir=out / "last",
        best_epoch=result.best_epoch,
        best_score=result.best_score,
        epochs_done=len(history),
        finished=finished,
        history=history,
        epochs_this_call=ran,
    )


def _check_refined(config: TrainConfig) -> None:
    """Before any training: the out_dir is free (or resumed) and rows name their image."""
    import pandas as pd

    out = Path(config.out_dir)
    started = [p for p in (out / "last", out / "stage0" / "last") if p.exists()]
    if started and not config.resume:
        raise UsageError(
            f"{out} already holds a training run ({started[0].relative_to(out)}/): pass "
            "--resume (resume: true) to continue it, or choose another out_dir"
        )
    if Path(config.train_csv).is_file():
        columns = pd.read_csv(config.train_csv, nrows=0).columns
        if config.bag_column not in columns:
            raise UsageError(
                f"cell_learning 'refined' needs the image of every row: {config.train_csv} "
                f"lacks the bag_column {config.bag_column!r} (columns: {list(columns)})"
            )


def _copy_checkpoint(source: Path, target: Path) -> None:
    """``model.pt`` and ``config.json`` of ``source`` into ``target`` (no training state)."""
    from hpa_kit.model import CONFIG_FILE, WEIGHTS_FILE

    for name in (WEIGHTS_FILE, CONFIG_FILE):
        with atomic_path(target / name) as temp:
            shutil.copyfile(source / name, temp)

"""Train one fold of a classifier: ``fit(TrainConfig(...)) -> TrainResult``.

The recipe is the seed solution's (REFERENCE.md section 2): a timm model
(:func:`hpa_kit.model.build_classifier`), AdamW, a cosine learning-rate schedule stepped per
optimizer step (optional linear warm-up), the seed's augmentations and focal/BCE loss, AMP
(``torch.autocast`` float16 + ``GradScaler``) on CUDA, gradient accumulation and clipping.

Outputs, in ``out_dir`` (only rank 0 writes):

- ``best/`` and ``last/``: checkpoints in the predictor's format
  (:func:`hpa_kit.model.save_checkpoint`: ``model.pt`` + ``config.json`` with channels,
  input size, mean/std, ``fold`` and ``metrics``); ``last/train_state.pt`` adds the optimizer,
  scheduler and scaler states, the finished epoch, the best score, the RNG states, the log
  rows and its own copy of the weights (one atomic file, so a crash between writes never
  leaves a resume point whose parts disagree).
- ``log.jsonl``: one JSON object per epoch (epoch, lr, train_loss, val_loss, macro_f1,
  micro_f1, per_class_f1, classes_in_val, best, elapsed_s).
- ``train_config.json``: the :class:`TrainConfig` of the run.

Validation (every epoch, threshold ``config.threshold`` = 0.5): loss (same criterion as
training, mean over all elements), per-class F1, macro-F1 = mean over the classes with at
least one positive in the validation fold, micro-F1 (:func:`hpa_kit._train_metrics.f1_scores`).

Reproducibility and exact resume: the model is initialised from ``seed``; at the start of
every epoch ``random``, ``numpy`` and ``torch`` are reseeded from ``(seed, epoch, rank)``;
the sample order is a permutation drawn from ``seed + epoch`` and each sample's augmentation
is seeded from ``(seed, epoch, index)`` (:class:`hpa_kit.dataset.SeededSampler`). An epoch
therefore depends only on the weights and optimizer state it starts from, which ``last/``
stores: ``resume=True`` continues after the last finished epoch and reproduces the
uninterrupted run's metrics (bit-exact on the CPU; on CUDA up to non-deterministic kernels).

Cell learning (``config.cell_learning``), when the rows are cell crops of images (a
``bag_column``, ``image`` by default, names each crop's image): ``image-labels`` trains each
row on its ``Label``; ``bags`` makes each image's crops one sample
(:class:`hpa_kit.dataset.BagDataset`, ``bags_per_batch`` whole bags per batch, stacked
without padding) whose per-crop logits are pooled per class (:func:`hpa_kit.mil.pool`, ``pooling``) into the image's logits for the loss,
and validates per image; ``refined`` runs ``refine_from`` and then ``refine_rounds`` rounds
of crop training on soft labels (:func:`hpa_kit.pseudo.fit_refined`). Every mode saves the
same per-crop classifier. ``soft_labels`` (a CSV of per-row targets) replaces ``Label``;
``init_from`` starts from a checkpoint's weights.

Many GPUs: launch with ``torchrun --nproc_per_node N -m hpa_kit.cli train --config FILE``.
With ``WORLD_SIZE > 1`` each process joins the group (NCCL on CUDA, gloo on the CPU), wraps
the model in ``DistributedDataParallel``, reads its share of each epoch (the sampler pads
the epoch to a multiple of N, as ``DistributedSampler`` does), validates a disjoint
``rank::N`` slice whose predictions are gathered on every rank, and rank 0 alone writes.
``batch_size`` is per process.

Errors (:mod:`hpa_kit.errors`; the CLI prints one line): a bad table, a missing or empty
channel file (all such ids listed at once, checked before training), an ``out_dir`` that
already holds a run without ``resume`` or a resume with a different config raise
:class:`~hpa_kit.errors.UsageError` before anything is written. An image that exists but
does not decode stops training with a :class:`~hpa_kit.errors.RunError` naming the id, the
file, the epoch and what ``last/`` holds: training stops rather than skipping it, because a
skipped image would silently change the data and a resumed run could not reproduce it. A
truncated or foreign ``last/train_state.pt`` is a RunError naming the file (it is read with
``weights_only=True``, so a crafted file cannot run code).

``pretrained`` defaults to ``False`` because this machine has no internet; on Kaggle (with
internet on) or Colab set ``pretrained: true`` to start from ImageNet weights as the seed did.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

try:
    import torch
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("hpa_kit.train needs torch: pip install torch") from exc

from hpa_kit._train_config import MONITORS, RESUME_FREE_FIELDS, TrainConfig, parse_override
from hpa_kit._train_dist import Dist, setup_distributed
from hpa_kit._train_metrics import f1_scores
from hpa_kit.dataset import (
    BagDataset,
    HPADataset,
    SampleReadError,
    SeededSampler,
    collate_bags,
    find_missing,
)
from hpa_kit.errors import RunError, UsageError
from hpa_kit.labels import NUM_CLASSES
from hpa_kit.losses import FocalLoss, focal_loss, per_class
from hpa_kit.mil import pool
from hpa_kit.model import ClassifierConfig, build_classifier, save_checkpoint
from hpa_kit.outputs import atomic_path, atomic_write_text

__all__ = [
    "MONITORS",
    "TrainConfig",
    "TrainResult",
    "build_loss",
    "cosine_lambda",
    "f1_scores",
    "fit",
    "parse_override",
    "split_fold",
]

LOG_FILE = "log.jsonl"
STATE_FILE = "train_state.pt"
CONFIG_RECORD = "train_config.json"


@dataclass(frozen=True)
class TrainResult:
    """What :func:`fit` did: checkpoint folders, the best score and the per-epoch log."""

    out_dir: Path
    best_dir: Path
    last_dir: Path
    best_epoch: int | None
    best_score: float | None
    epochs_done: int
    finished: bool
    history: list[dict[str, Any]] = field(default_factory=list)
    epochs_this_call: int = 0


# ---------------------------------------------------------------- pure pieces


def cosine_lambda(total_steps: int, *, warmup_steps: int = 0, min_ratio: float = 0.0):
    """Multiplier of the base lr after ``step`` optimizer steps: linear warm-up, then cosine.

    >>> f = cosine_lambda(10, warmup_steps=2)
    >>> [round(f(s), 3) for s in (0, 1, 2, 6, 10)]
    [0.5, 1.0, 1.0, 0.5, 0.0]
    """
    total_steps = max(int(total_steps), 1)
    warmup_steps = min(int(warmup_steps), total_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(total_steps - warmup_steps, 1)
        progress = min((step - warmup_steps) / span, 1.0)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def build_loss(config: TrainConfig) -> FocalLoss:
    """The criterion of ``config``: ``bce`` = focal with alpha 0.5, gamma 0 (half torch BCE)."""
    if config.loss == "bce":
        return FocalLoss(alpha=0.5, gamma=0.0)
    alpha = per_class(config.alpha, dict(config.class_alpha), num_classes=NUM_CLASSES)
    gamma = per_class(config.gamma, dict(config.class_gamma), num_classes=NUM_CLASSES)
    return FocalLoss(alpha=alpha, gamma=gamma)


def _limit_rows(df, limit: int | float | None, seed: int, *, group: str | None = None):
    """A seeded sample of ``limit`` rows of ``df`` (a count or a fraction); with ``group``
    (a column of ``df``) the sample is of whole groups (bags), so no bag is cut."""
    if limit is None or len(df) == 0:
        return df
    keys = df[group].astype(str).drop_duplicates() if group in df.columns else df.index.to_series()
    count = int(limit) if isinstance(limit, int) else max(1, int(round(limit * len(keys))))
    if count >= len(keys):
        return df
    chosen = keys.sample(n=count, random_state=seed)
    if group in df.columns:
        return df[df[group].astype(str).isin(set(chosen))]
    return df.loc[chosen.sort_index().index]


def split_fold(config: TrainConfig):
    """``(train_df, val_df)`` of ``config.fold``; folds from ``config.folds_column`` if the
    CSV has it, else :func:`hpa_kit.folds.make_folds` (``n_folds``, ``seed``).

    Raises :class:`~hpa_kit.errors.UsageError` naming the file (and the row's id where one
    is at fault) for a missing or malformed table.
    """
    path = Path(config.train_csv)
    df = _read_table(path)
    if config.folds_column in df.columns:
        folds = df[config.folds_column]
        if folds.isna().any():
            raise UsageError(f"{path}: column {config.folds_column!r} has empty values")
        try:
            folds = folds.astype(int).to_numpy()
        except (TypeError, ValueError) as exc:
            raise UsageError(f"{path}: column {config.folds_column!r} is not integer") from exc
    else:
        from hpa_kit.folds import make_folds

        folds = make_folds(df, n_splits=config.n_folds, seed=config.seed)["fold"].to_numpy()
    if folds.min() < 0 or folds.max() >= config.n_folds:
        raise UsageError(f"{path}: fold values must be in 0..{config.n_folds - 1}")
    train_df = df[folds != config.fold].reset_index(drop=True)
    val_df = df[folds == config.fold].reset_index(drop=True)
    if len(train_df) == 0 or len(val_df) == 0:
        raise UsageError(
            f"{path}: fold {config.fold} leaves {len(train_df)} training and {len(val_df)} "
            "validation rows"
        )
    group = config.bag_column
    train_df = _limit_rows(train_df, config.limit_train, config.seed, group=group)
    val_df = _limit_rows(val_df, config.limit_val, config.seed, group=group)
    return train_df.reset_index(drop=True), val_df.reset_index(drop=True)


def _read_table(path: Path):
    import pandas as pd

    from hpa_kit.labels import LabelError, parse_label_list

    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise UsageError(f"train_csv {path} {what}")
    try:
        # Label as text: a table of one-class labels ("0", "5") would otherwise be integers
        df = pd.read_csv(path, dtype={"ID": str, "Label": str}, keep_default_na=False)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise UsageError(f"train_csv {path} is not a readable CSV: {exc}") from exc
    for column in ("ID", "Label"):
        if column not in df.columns:
            raise UsageError(f"{path} lacks a {column!r} column (columns: {list(df.columns)})")
    if df.empty:
        raise UsageError(f"{path} has no rows")
    if (df["ID"] == "").any():
        raise UsageError(f"{path}: line {int((df['ID'] == '').to_numpy().argmax()) + 2} has no ID")
    for image_id, text in zip(df["ID"], df["Label"], strict=True):
        try:
            parse_label_list(text)
        except LabelError as exc:
            raise UsageError(f"{path}: image id {image_id!r}: {exc}") from exc
    return df


def _check_files(config: TrainConfig, ids: list[str]) -> None:
    """Every channel file of ``ids`` exists and is not empty, else a UsageError listing them."""
    missing = find_missing(
        ids, config.images_dir, channels=config.channels, cache_dir=config.cache_dir
    )
    if missing:
        shown = "; ".join(f"{k}: {v}" for k, v in list(missing.items())[:10])
        more = f" (and {len(missing) - 10} more)" if len(missing) > 10 else ""
        raise UsageError(
            f"{len(missing)} of {len(ids)} images of {config.train_csv} (fold {config.fold}) "
            f"are missing channel files: {shown}{more}"
        )


def _derived_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _worker_init(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def _rng_state() -> dict[str, Any]:
    """The RNG states, as plain types and tensors (loadable with ``weights_only=True``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [str(name), torch.from_numpy(keys.astype(np.int64)), int(pos)]
        + [int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


_STATE_KEYS = frozenset(
    {"epoch", "model", "optimizer", "scheduler", "scaler", "best_score", "best_epoch", "rng"}
    | {"history", "train_config"}
)


def _load_state(path: Path) -> dict[str, Any]:
    """``train_state.pt`` as a dict, or a RunError naming the file (never a traceback).

    ``weights_only=True``: a crafted pickle in ``out_dir`` cannot run code here.
    """
    import pickle

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError, OSError) as exc:
        raise RunError(
            f"cannot resume from {path}: the file is truncated or not a training state "
            f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); start over in another "
            "out_dir (or remove this one)"
        ) from exc
    lacking = sorted(_STATE_KEYS - set(state)) if isinstance(state, dict) else ["everything"]
    if lacking:
        raise RunError(f"cannot resume from {path}: it lacks {lacking} (not a training state)")
    return state


def _better(value: float | None, best: float | None, mode: str) -> bool:
    if value is None or not math.isfinite(value):
        return False
    if best is None:
        return True
    return value < best if mode == "min" else value > best


# ---------------------------------------------------------------- the loop


class _Run:
    """State of one training process (model, optimizer, loaders); used only by :func:`fit`."""

    def __init__(self, config: TrainConfig, dist_info: Dist) -> None:
        self.config = config
        self.dist = dist_info
        self.device = dist_info.device
        self.out_dir = Path(config.out_dir)
        self.use_amp = bool(config.amp) and self.device.type == "cuda"
        self.train_df, self.val_df = split_fold(config)
        self.classifier_config = ClassifierConfig(
            arch=config.arch,
            channels=config.channels,
            input_size=config.input_size,
            mean=config.mean,
            std=config.std,
            fold=config.fold,
        )
        _check_files(config, list(self.train_df["ID"]) + list(self.val_df["ID"]))
        self._build_data()
        self._build_model()
        self._build_optimizer()
        self.start_epoch = 0
        self.best_score: float | None = None
        self.best_epoch: int | None = None
        self.history: list[dict[str, Any]] = []

    # -- setup helpers
    @property
    def bagged(self) -> bool:
        return self.config.cell_learning == "bags"

    def _dataset(self, df, *, train: bool, targets=None) -> HPADataset:
        config = self.config
        return HPADataset.for_config(
            df,
            config.images_dir,
            self.classifier_config,
            train=train,
            read_size=config.read_size,
            cache_dir=config.cache_dir,
            write_cache=config.write_cache,
            targets=targets,
        )

    def _build_data(self) -> None:
        config, rank, world = self.config, self.dist.rank, self.dist.world_size
        soft = _soft_targets(config, self.train_df, self.val_df)
        train_rows = self._dataset(self.train_df, train=True, targets=soft[0])
        val_rows = self._dataset(self.val_df, train=False, targets=soft[1])
        if self.bagged:
            _check_bags(config, self.train_df, self.val_df)
            self.train_set = BagDataset.from_column(train_rows, self.train_df, config.bag_column)
            val_bags = BagDataset.from_column(val_rows, self.val_df, config.bag_column)
            self.val_set = BagDataset(val_rows, val_bags.groups[rank::world])
            self.val_targets = val_bags.targets
        else:
            self.train_set = train_rows
            self.val_set = torch.utils.data.Subset(val_rows, range(rank, len(val_rows), world))
            self.val_targets = val_rows.targets
        self.sampler = SeededSampler(
            len(self.train_set), seed=config.seed, shuffle=True, rank=rank, world_size=world
        )
        self.batch_size = config.batch_size
        if self.bagged:
            self.batch_size = config.bags_per_batch or _bags_per_batch(config, self.train_set)
        self.batches_per_epoch = math.ceil(len(self.sampler) / self.batch_size)
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / config.accumulation)

    def _build_model(self) -> None:
        config = self.config
        _seed_all(config.seed)
        self.model = build_classifier(
            config.arch,
            self.classifier_config.in_chans,
            self.classifier_config.num_classes,
            pretrained=config.pretrained,
        )
        if config.init_from is not None:
            _load_weights(self.model, Path(config.init_from))
        self.model = self.model.to(self.device)
        self.net = self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)
        self.criterion = build_loss(config).to(self.device)

    def _build_optimizer(self) -> None:
        config = self.config
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        schedule = cosine_lambda(
            self.steps_per_epoch * config.epochs,
            warmup_steps=config.warmup_steps,
            min_ratio=config.min_lr / config.lr,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)

    def _loader(self, dataset, *, sampler=None, batch_size: int, epoch: int, train: bool):
        generator = torch.Generator()
        generator.manual_seed(_derived_seed(self.config.seed, epoch, self.dist.rank, 1 + train))
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=self.config.workers,
            pin_memory=self.device.type == "cuda",
            drop_last=False,
            worker_init_fn=_worker_init,
            generator=generator,
            collate_fn=collate_bags if self.bagged else None,
        )

    def _progress(self, iterable, *, total: int, desc: str):
        from hpa_kit.progress import progress_bar

        enabled = self.config.progress and self.dist.is_main
        return progress_bar(iterable, enabled=enabled, total=total, desc=desc, leave=False)

    def _autocast(self):
        if self.use_amp:
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def _forward(self, batch, net) -> tuple[torch.Tensor, torch.Tensor]:
        """``(float32 logits, targets)`` of a batch: one row per image, or per bag (pooled)."""
        images, targets = batch[0], batch[-1]
        with self._autocast():
            logits = net(images.to(self.device, non_blocking=True))
        logits = logits.float()
        if self.bagged:
            bags = batch[1].to(self.device, non_blocking=True)
            logits = pool(
                logits,
                bags,
                len(targets),
                method=self.config.pooling,
                temperature=self.config.pool_temperature,
            )
        return logits, targets.to(self.device, non_blocking=True)

    # -- resume
    def _compatible(self, saved: dict[str, Any], state_path: Path) -> None:
        current = self.config.to_dict()
        defaults = TrainConfig.field_defaults()
        free = RESUME_FREE_FIELDS | self.config.unused_fields()
        diffs = [
            f"{k}: {saved.get(k, defaults.get(k))!r} -> {current[k]!r}"
            for k in current
            if k not in free and saved.get(k, defaults.get(k)) != current[k]
        ]
        if diffs:
            raise UsageError(
                f"cannot resume {self.out_dir}: the config differs from the one {state_path} "
                f"was written with ({'; '.join(diffs)})"
            )

    def restore(self) -> bool:
        """Load ``last/train_state.pt`` if there is one; ``False`` when there is none.

        Raises :class:`~hpa_kit.errors.RunError` naming the file when it is truncated or
        not a state this module wrote, :class:`~hpa_kit.errors.UsageError` when it was
        written with a different config.
        """
        state_path = self.out_dir / "last" / STATE_FILE
        if not state_path.is_file():
            return False
        state = _load_state(state_path)
        self._compatible(state["train_config"], state_path)
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            _set_rng_state(state["rng"])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
            raise RunError(
                f"{state_path} does not fit this run's model or optimizer "
                f"({type(exc).__name__}: {' '.join(str(exc).split())[:300]})"
            ) from exc
        self.start_epoch = int(state["epoch"]) + 1
        self.best_score = state["best_score"]
        self.best_epoch = state["best_epoch"]
        self.history = list(state["history"])
        return True

    # -- one epoch
    def train_epoch(self, epoch: int) -> float:
        config = self.config
        _seed_all(_derived_seed(config.seed, epoch, self.dist.rank))
        self.sampler.set_epoch(epoch)
        loader = self._loader(
            self.train_set,
            sampler=self.sampler,
            batch_size=self.batch_size,
            epoch=epoch,
            train=True,
        )
        self.net.train()
        self.optimizer.zero_grad(set_to_none=True)
        total, count = 0.0, 0
        n_batches = len(loader)
        bar = self._progress(loader, total=n_batches, desc=f"epoch {epoch} train")
        for i, batch in enumerate(bar):
            group_start = (i // config.accumulation) * config.accumulation
            group_size = min(config.accumulation, n_batches - group_start)
            is_step = i == group_start + group_size - 1
            sync = contextlib.nullcontext()
            if self.dist.enabled and not is_step:
                sync = self.net.no_sync()
            with sync:
                logits, targets = self._forward(batch, self.net)
                loss = self.criterion(logits, targets)
                self.scaler.scale(loss / group_size).backward()
            lr_used = self.optimizer.param_groups[0]["lr"]
            if is_step:
                if config.clip_grad_norm is not None:
                    self.scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.clip_grad_norm)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
            value = float(loss.detach())
            total += value * len(targets)
            count += len(targets)
            bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr_used:.2e}")
        total, count = self.dist.sum([total, float(count)])
        return total / max(count, 1.0)

    @torch.no_grad()
    def validate(self, epoch: int) -> dict[str, Any]:
        config = self.config
        loader = self._loader(
            self.val_set,
            batch_size=self.batch_size if self.bagged else config.val_batch_size or self.batch_size,
            epoch=epoch,
            train=False,
        )
        self.net.eval()
        self.dist.broadcast_buffers(self.model)  # BatchNorm statistics of rank 0 everywhere
        logits_parts = []
        for batch in self._progress(loader, total=len(loader), desc=f"epoch {epoch} val"):
            logits_parts.append(self._forward(batch, self.model)[0].cpu())
        local = torch.cat(logits_parts) if logits_parts else torch.zeros(0, NUM_CLASSES)
        shards = self.dist.gather(local)
        # rank r validated rows (bags) r, r + W, r + 2W, ...: interleave back to table order
        targets = torch.from_numpy(self.val_targets)
        logits = torch.zeros(targets.shape)
        for rank, shard in enumerate(shards):
            logits[rank :: self.dist.world_size] = shard
        alpha, gamma = self.criterion.alpha.cpu(), self.criterion.gamma.cpu()
        val_loss = float(focal_loss(logits, targets, alpha=alpha, gamma=gamma))
        scores = f1_scores(
            torch.sigmoid(logits).numpy(), targets.numpy(), threshold=config.threshold
        )
        return {"val_loss": val_loss, **scores}

    # -- outputs (rank 0)
    def save(self, epoch: int, row: dict[str, Any], *, improved: bool) -> None:
        metrics = {
            k: row[k]
            for k in ("epoch", "train_loss", "val_loss", "macro_f1", "micro_f1", "per_class_f1")
        }
        metrics["monitor"] = self.config.monitor
        cfg = self.classifier_config.replace(fold=self.config.fold, metrics=metrics)
        # Order matters for a crash between writes: best first, then last/ whose
        # train_state.pt (one atomic file) alone decides where a resume starts; it holds its
        # own copy of the weights and the log rows, so it is always self-consistent.
        if improved:
            save_checkpoint(self.out_dir / "best", self.model, cfg)
        last = self.out_dir / "last"
        save_checkpoint(last, self.model, cfg)
        state = {
            "epoch": epoch,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "rng": _rng_state(),
            "history": list(self.history),
            "train_config": self.config.to_dict(),
        }
        with atomic_path(last / STATE_FILE) as temp, open(temp, "wb") as handle:
            torch.save(state, handle)


def _load_weights(model: torch.nn.Module, checkpoint: Path) -> None:
    """Start from the weights of a checkpoint folder (``init_from``), e.g. to fine-tune."""
    from hpa_kit.model import WEIGHTS_FILE

    path = checkpoint / WEIGHTS_FILE if checkpoint.is_dir() else checkpoint
    if not path.is_file():
        raise UsageError(f"init_from {checkpoint}: no {WEIGHTS_FILE} there")
    import pickle

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except (RuntimeError, ValueError, EOFError, OSError, pickle.UnpicklingError) as exc:
        raise UsageError(
            f"init_from {path} does not fit this run's model ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:200]})"
        ) from exc


def _soft_targets(config: TrainConfig, train_df, val_df) -> tuple[Any, Any]:
    """``(train, val)`` target arrays from ``config.soft_labels``, or ``(None, None)``."""
    if config.soft_labels is None:
        return None, None
    from hpa_kit.pseudo import read_soft_labels

    table = read_soft_labels(config.soft_labels)
    return _align(table, train_df, config), _align(table, val_df, config)


def _align(table, df, config: TrainConfig) -> np.ndarray:
    missing = [i for i in df["ID"] if i not in table.index]
    if missing:
        raise UsageError(
            f"soft_labels {config.soft_labels} has no row for {len(missing)} ids of "
            f"{config.train_csv}, e.g. {missing[0]!r}"
        )
    return table.loc[list(df["ID"])].to_numpy(dtype=np.float32)


def _bags_per_batch(config: TrainConfig, bags: BagDataset) -> int:
    """Bags per batch when ``bags_per_batch`` is unset: ``batch_size`` cells on average."""
    mean_size = sum(len(g) for g in bags.groups) / max(len(bags), 1)
    return max(1, round(config.batch_size / max(mean_size, 1.0)))


def _check_bags(config: TrainConfig, train_df, val_df) -> None:
    column = config.bag_column
    if column not in train_df.columns:
        raise UsageError(
            f"cell_learning 'bags' groups rows by {column!r} (bag_column), which "
            f"{config.train_csv} lacks (columns: {list(train_df.columns)})"
        )
    shared = sorted(set(train_df[column].astype(str)) & set(val_df[column].astype(str)))
    if shared:
        raise UsageError(
            f"{config.train_csv}: {len(shared)} bags ({column} {shared[0]!r}, ...) have rows "
            f"in both the training and the validation fold; draw the folds per {column}"
        )


def _write_log(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))


def _write_config(out_dir: Path, config: TrainConfig) -> None:
    atomic_write_text(out_dir / CONFIG_RECORD, json.dumps(config.to_dict(), indent=2) + "\n")


def _read_failure(exc: SampleReadError, epoch: int, run: _Run) -> RunError:
    """The one-line report of an unreadable image met during training.

    Training stops rather than skipping the image: a skipped image would silently change
    the data of this epoch and of every later one, and a resumed run could not reproduce it.
    """
    if epoch == 0:
        after = "fix the file (or remove its row) and run again"
    else:
        after = (
            f"epochs 0-{epoch - 1} are saved in {run.out_dir / 'last'}: fix the file and "
            "run again with --resume"
        )
    return RunError(f"training stopped in epoch {epoch}: {exc}; {after}")


def fit(config: TrainConfig) -> TrainResult:
    """Train ``config.fold`` for ``config.epochs`` epochs; see the module docstring.

    With ``config.resume`` and ``out_dir/last/train_state.pt`` present, continues after the
    last finished epoch (the config must match the saved one except for
    ``resume``, ``stop_after_epochs``, ``workers``, ``progress``, ``images_dir``, ``cache_dir``,
    ``device`` and ``out_dir``, so a copied run folder resumes where it was copied); without
    it a fresh run refuses an ``out_dir`` that already holds one (UsageError).
    ``stop_after_epochs=k`` ends this call after k epochs as if interrupted (the schedule
    still spans ``epochs``), so a later ``resume=True`` call continues it.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"fit needs a TrainConfig, got {type(config).__name__}")
    dist_info = setup_distributed(config.device)
    try:
        if config.cell_learning == "refined":
            from hpa_kit.pseudo import fit_refined

            return fit_refined(config, dist_info)
        return _fit(config, dist_info)
    finally:
        dist_info.close()


def _check_out_dir(config: TrainConfig) -> None:
    """Before any work: ``out_dir`` is (or can become) a folder this process can write in,
    and holds no run unless resuming."""
    from hpa_kit.outputs import check_writable_folder

    out_dir = Path(config.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"out_dir {out_dir} exists and is not a folder")
    existing = next(p for p in (out_dir, *out_dir.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise UsageError(f"out_dir {out_dir}: {existing} is not a folder")
    check_writable_folder(existing, what="out_dir")
    if not config.resume and (out_dir / "last").exists():
        raise UsageError(
            f"{out_dir} already holds a training run (last/): pass --resume (resume: true) to "
            "continue it, or choose another out_dir"
        )


def _fit(config: TrainConfig, dist_info: Dist) -> TrainResult:
    out_dir = Path(config.out_dir)
    _check_out_dir(config)
    run = _Run(config, dist_info)
    resumed = config.resume and run.restore()
    if config.resume and not resumed and dist_info.is_main:
        print(f"hpa-kit train: nothing to resume in {out_dir}; starting from epoch 0")
    if dist_info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_config(out_dir, config)
        _write_log(out_dir / LOG_FILE, run.history)
    dist_info.barrier()
    epochs_this_call = 0
    started = time.perf_counter()
    for epoch in range(run.start_epoch, config.epochs):
        if config.stop_after_epochs is not None and epochs_this_call >= config.stop_after_epochs:
            break
        lr = run.scheduler.get_last_lr()[0]
        try:
            train_loss = run.train_epoch(epoch)
            row: dict[str, Any] = {"epoch": epoch, "lr": lr, "train_loss": train_loss}
            row.update(run.validate(epoch))
        except SampleReadError as exc:
            raise _read_failure(exc, epoch, run) from exc
        score = row.get(config.monitor)
        improved = _better(score, run.best_score, config.mode)
        if improved:
            run.best_score, run.best_epoch = float(score), epoch
        row["best"] = improved
        row["elapsed_s"] = round(time.perf_counter() - started, 3)
        run.history.append(row)
        if dist_info.is_main:
            run.save(epoch, row, improved=improved)
            _write_log(out_dir / LOG_FILE, run.history)
            summary = ", ".join(
                f"{k} {row[k]:.4f}"
                for k in ("train_loss", "val_loss", "macro_f1", "micro_f1")
                if isinstance(row.get(k), float)
            )
            print(f"epoch {epoch}: {summary}" + (" (best)" if improved else ""), flush=True)
        dist_info.barrier()
        epochs_this_call += 1
    epochs_done = run.start_epoch + epochs_this_call
    return TrainResult(
        out_dir=out_dir,
        best_dir=out_dir / "best",
        last_dir=out_dir / "last",
        best_epoch=run.best_epoch,
        best_score=run.best_score,
        epochs_done=epochs_done,
        finished=epochs_done >= config.epochs,
        history=list(run.history),
        epochs_this_call=epochs_this_call,
    )

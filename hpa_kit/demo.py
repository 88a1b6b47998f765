"""The whole pipeline on synthetic data, end to end, on a CPU: ``run_demo(out) -> DemoResult``.

What it does (each step uses the package's own modules):

1. **Data** (:func:`hpa_kit.synth.write_dataset`): a training set and a test set of
   synthetic HPA-like images. The training set keeps only image-level labels
   (``train.csv``); the test set's per-cell truth (``truth.csv``, ``masks/``) is read only
   for scoring. Images hold 1-3 classes spread over different cells, so classifying each
   cell matters.
2. **Weak labels** (:func:`hpa_kit.crop.write_cell_crops`): every training image is segmented
   with the weights-free classical segmenter (never with the synthetic label images) and
   each cell is cropped exactly as the predictor crops (:func:`hpa_kit.crop.crop_cells`); a
   crop gets its *image's* labels. Folds are drawn per image, so no image has cells on both sides.
3. **Training** (:func:`hpa_kit.train.fit`): a small timm model from scratch on the crops,
   briefly, on the CPU. ``cell_learning`` chooses how the crops learn from their image's
   labels: ``image-labels`` (the default, as above), ``bags`` (:mod:`hpa_kit.mil`),
   ``refined`` (soft labels, :mod:`hpa_kit.pseudo`) or ``oracle``, which trains the crops on
   the true classes of the synthetic cell each overlaps (:mod:`hpa_kit.oracle`,
   ``crops/crops_oracle.csv``) and exists only to measure how much the labels limit the
   score. The ``weak-labels`` preset (:data:`PRESETS`) trains long enough on large enough
   crops that they do.
4. **Prediction** (:func:`hpa_kit.predict.predict_folder`): the test set is segmented with
   the same classical segmenter, every cell is classified with TTA, ``submission.csv`` is
   written and validated (:func:`hpa_kit.submission.validate_submission`).
5. **Baselines** (:mod:`hpa_kit.baselines`), on the very same cells (the masks are taken
   from ``submission.csv``):
   ``baseline.csv`` gives every cell its image's prediction from the same classifier applied
   to the whole image (resized to its input size, same TTA); ``baseline_cell_mean.csv``
   gives every cell the mean of its image's cell probabilities (the same per-cell numbers,
   with the within-image differences removed: the cleanest measure of what per-cell
   classification adds).
6. **Scores** (:func:`hpa_kit.metric.score_submission`, mask IoU >= 0.6) of the three files
   against ``truth.csv``; the segmentation against the synthetic cell labels
   (:func:`hpa_kit.segment.match_dataset`, F1 at IoU 0.6 pooled over images); overlays of a
   few test images (:func:`hpa_kit.viz.prediction_vs_truth`: predicted outlines and top-2
   classes, beside the truth, by short class name); ``summary.json`` with the three mAPs, the
   gain over the better baseline, the F1, the torch kernel set and seconds per stage.

Scale. :class:`hpa_kit.segment.SegConfig` declares its areas in pixels of a full-resolution
(2048 px) HPA image, and the classical maps smooth by a length in the same unit. A synthetic
image of ``size`` px stands for a 2048 px HPA image shrunk ``pixel_size = 2048 / size``
times (every synth length is a fraction of the image side), so the demo segments with
``ClassicalSegmenter(seg_scale, pixel_size=2048 / size)``, which scales those areas by
``(seg_scale / pixel_size) ** 2`` and the lengths by ``seg_scale / pixel_size``; with the
default ``pixel_size=1`` the classical segmenter finds no cell in a 384 px synthetic image.

Output folder layout (``out``; ``{id}`` is ``train_00000``..., ``test_00000``...)::

    .hpa-kit-demo                 marker: a rerun into this folder replaces the outputs below
    train/ test/                  synthetic data (hpa_kit.synth.write_dataset layout):
      images/{id}_{red,green,blue,yellow}.png
      masks/{id}_cells.png, masks/{id}_nuclei.png    16-bit true label images
      train.csv                   ID,Label (image-level labels; the only labels training sees)
      sample_submission.csv       ID,ImageWidth,ImageHeight,PredictionString (placeholders)
      truth.csv                   every true (cell, class) as ``class 1 mask`` (test: scoring)
    crops/
      images/{id}_c{cell:04d}_{color}.png   one crop per found cell, config.channels
      crops.csv                   ID,Label,image,fold (each crop with its image's labels)
      crops_oracle.csv            the same crops with their true cell's classes (oracle only)
    model/                        hpa_kit.train.fit output
      best/model.pt, best/config.json         the checkpoint used (lowest validation loss)
      last/model.pt, last/config.json, last/train_state.pt   the last epoch (resumable)
      log.jsonl, train_config.json            per-epoch log, the training config
      stage0/, round1/, ...       refined only: each stage's run (round*/soft_labels.csv)
    submission.csv                per-cell prediction of the test set (validated)
    baseline.csv                  whole-image confidence for every cell
    baseline_cell_mean.csv        mean cell confidence for every cell
    overlays/{id}.png             predicted (left) beside truth (right), first ``overlays`` ids
    summary.json                  scores, gain, F1, counts, cell learning and preset,
                                  training, torch kernels, seconds, problems, paths, config

Everything is seeded: the same config, on the same machine and torch CPU kernel set, gives the
same files and numbers (torch on the CPU is deterministic for these models; the timings are
not). Another kernel set (``ATEN_CPU_CAPABILITY``, recorded in ``summary.json``) rounds
differently and trains to slightly different scores; BENCHMARKS.md gives their range.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpa_kit.errors import RunError, UsageError
from hpa_kit.io import CHANNELS, check_channels
from hpa_kit.outputs import atomic_path, atomic_write_text
from hpa_kit.segment import ClassicalSegmenter
from hpa_kit.synth import SynthConfig, SynthDataset

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from hpa_kit.train import TrainConfig

__all__ = [
    "HPA_SIZE",
    "SEGMENTATION_IOU",
    "CELL_LEARNING",
    "PRESETS",
    "DemoConfig",
    "DemoResult",
    "demo_paths",
    "demo_train_config",
    "format_summary",
    "gain_over_baselines",
    "preset_config",
    "quick_config",
    "run_demo",
    "torch_kernels",
]

HPA_SIZE = 2048
"""Side, in pixels, of the full-resolution HPA image a synthetic image stands for."""
SEGMENTATION_IOU = 0.6
"""IoU at which a found cell matches a true cell (as the metric's mask IoU)."""

CELL_LEARNING: tuple[str, ...] = ("image-labels", "bags", "refined", "oracle")
"""``DemoConfig.cell_learning`` values: the training modes of :class:`hpa_kit.train.TrainConfig`
and ``oracle`` (crops trained on the synthetic truth, to measure what better labels give)."""

PRESETS: dict[str, dict[str, Any]] = {
    "weak-labels": {
        "input_size": 64,
        "epochs": 16,
        "refine_from": "image-labels",
        "refine_rounds": 2,
    },
}
"""Named demo settings. ``weak-labels``: crops and training large enough that the crops'
labels limit the score (training on the true cell labels, the oracle, clearly beats image
labels: BENCHMARKS.md gives the gap per seed and kernel set), so weak-label methods show what
they recover; ``refined`` there is the measured best."""

MARKER = ".hpa-kit-demo"
# Paths a demo writes under ``out`` (removed before a rerun into a folder holding the marker).
_OUTPUTS = (
    "train",
    "test",
    "crops",
    "model",
    "overlays",
    "submission.csv",
    "baseline.csv",
    "baseline_cell_mean.csv",
    "summary.json",
)


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class DemoConfig:
    """Every switch of the demo (BENCHMARKS.md gives the defaults' scores and time).

    - ``n_train``, ``n_test``: synthetic images in each set; ``size``: their side in px.
      The test set is large so that the scores measure the classifier rather than which
      few images were drawn: on a few dozen test images the demo's claim, its gain over the
      better baseline, changed with the draw (BENCHMARKS.md);
    - ``seg_scale``: scale of the segmentation maps relative to the image;
    - ``arch``, ``input_size``, ``channels``: the timm classifier and its crops;
    - ``epochs``, ``batch_size``, ``lr``: training (AdamW, cosine, BCE);
    - ``n_folds``: one fold of the training *images* (``1 / n_folds``) validates, which picks
      the best epoch by validation loss;
    - ``tta``: TTA set for prediction and the baseline (``"none"``, ``"seed"``, ``"d4"``);
    - ``margin``: crop margin (as the predictor's); ``overlays``: test images drawn;
    - ``seed``: base seed of the data (train ``seed``, test ``seed + 1``) and of training;
    - ``synth``: the synthetic image recipe; ``progress``: tqdm bars;
    - ``torch_threads``: torch's CPU threads during the run (restored after; ``None`` keeps
      torch's setting). 1 by default: on a CPU shared with other jobs, OpenMP threads that
      wait for each other made training several times slower than one thread;
    - ``cell_learning``: how the crops learn from their image's labels (:data:`CELL_LEARNING`):
      ``image-labels`` (each crop its image's labels), ``bags`` (an image's crops pooled by
      ``pooling``), ``refined`` (``refine_from``, then ``refine_rounds`` rounds of soft
      labels, :mod:`hpa_kit.pseudo`) or ``oracle`` (each crop the true classes of the
      synthetic cell it overlaps, :mod:`hpa_kit.oracle`: a measurement, not a method);
    - ``preset``: the name of the preset the config came from (:data:`PRESETS`), recorded.
    """

    n_train: int = 120
    n_test: int = 144
    size: int = 384
    seg_scale: float = 1.0
    arch: str = "lcnet_050"
    input_size: int = 48
    channels: tuple[str, ...] = ("red", "green", "blue")
    epochs: int = 8
    batch_size: int = 32
    lr: float = 3e-3
    n_folds: int = 8
    tta: str = "seed"
    margin: float = 0.1
    overlays: int = 3
    seed: int = 0
    synth: SynthConfig = field(default_factory=SynthConfig)
    progress: bool = True
    torch_threads: int | None = 1
    cell_learning: str = "image-labels"
    refine_from: str = "image-labels"
    refine_rounds: int = 2
    pooling: str = "lse"
    preset: str | None = None

    def __post_init__(self) -> None:
        from hpa_kit.tta import resolve_tta

        for name in ("n_train", "n_test", "epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"DemoConfig.{name} must be an int >= 1, got {value!r}")
        if self.n_folds < 2 or self.n_train < self.n_folds:
            raise UsageError(
                f"DemoConfig needs 2 <= n_folds <= n_train, got n_folds={self.n_folds}, "
                f"n_train={self.n_train}"
            )
        if not 64 <= self.size <= HPA_SIZE:
            raise UsageError(f"DemoConfig.size must be in [64, {HPA_SIZE}], got {self.size}")
        if not 0 < self.seg_scale <= 1:
            raise UsageError(f"DemoConfig.seg_scale must be in (0, 1], got {self.seg_scale}")
        if self.input_size < 16:
            raise UsageError(f"DemoConfig.input_size must be >= 16, got {self.input_size}")
        try:
            check_channels(self.channels)
        except ValueError as exc:
            raise UsageError(f"DemoConfig.channels: {exc}") from None
        if self.lr <= 0 or self.margin < 0 or self.overlays < 0:
            raise UsageError(
                f"DemoConfig needs lr > 0, margin >= 0, overlays >= 0; got {self.lr}, "
                f"{self.margin}, {self.overlays}"
            )
        try:
            resolve_tta(self.tta)
        except ValueError as exc:
            raise UsageError(f"DemoConfig.tta: {exc}") from None
        if self.torch_threads is not None and self.torch_threads < 1:
            raise UsageError(
                f"DemoConfig.torch_threads must be >= 1 or None, got {self.torch_threads}"
            )
        self._check_cell_learning()

    def _check_cell_learning(self) -> None:
        from hpa_kit.mil import POOLINGS

        if self.cell_learning not in CELL_LEARNING:
            raise UsageError(
                f"DemoConfig.cell_learning must be one of {CELL_LEARNING}, "
                f"got {self.cell_learning!r}"
            )
        if self.refine_from not in ("image-labels", "bags") or self.pooling not in POOLINGS:
            raise UsageError(
                f"DemoConfig needs refine_from image-labels or bags and pooling in {POOLINGS}, "
                f"got {self.refine_from!r}, {self.pooling!r}"
            )
        rounds = self.refine_rounds
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
            raise UsageError(f"DemoConfig.refine_rounds must be an int >= 1, got {rounds!r}")

    @property
    def pixel_size(self) -> float:
        """Full-resolution HPA pixels per synthetic image pixel (``2048 / size``)."""
        return HPA_SIZE / self.size

    def replace(self, **changes: Any) -> DemoConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["pixel_size"] = self.pixel_size
        return data


def preset_config(name: str, **changes: Any) -> DemoConfig:
    """The :class:`DemoConfig` of preset ``name`` (:data:`PRESETS`), with ``changes``.

    >>> cfg = preset_config("weak-labels", seed=1)
    >>> cfg.input_size, cfg.epochs, cfg.preset, cfg.seed
    (64, 16, 'weak-labels', 1)
    """
    if name not in PRESETS:
        raise UsageError(f"unknown demo preset {name!r}; presets: {sorted(PRESETS)}")
    return DemoConfig(**{**PRESETS[name], "preset": name, **changes})


def quick_config(**changes: Any) -> DemoConfig:
    """A reduced demo (small images, one short epoch, no TTA): checks the plumbing, for tests."""
    base = DemoConfig(
        n_train=8,
        n_test=3,
        size=192,
        arch="lcnet_035",
        input_size=32,
        epochs=1,
        batch_size=32,
        n_folds=4,
        tta="none",
        overlays=1,
        synth=SynthConfig(cells=(6, 10)),
        progress=False,
    )
    return base.replace(**changes)


# --------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class DemoResult:
    """What :func:`run_demo` did; ``summary`` is also written to ``paths["summary"]``."""

    out: Path
    summary: dict[str, Any]
    paths: dict[str, Path]

    @property
    def map(self) -> float:
        return float(self.summary["scores"]["cells"]["map"])

    @property
    def baseline_map(self) -> float:
        return float(self.summary["scores"]["baseline"]["map"])


def demo_paths(out: str | os.PathLike) -> dict[str, Path]:
    """Where a demo into ``out`` writes each of its outputs (see the module docstring)."""
    out = Path(out)
    return {
        "out": out,
        "train": out / "train",
        "test": out / "test",
        "crops": out / "crops",
        "crops_oracle": out / "crops" / "crops_oracle.csv",
        "model": out / "model",
        "submission": out / "submission.csv",
        "baseline": out / "baseline.csv",
        "baseline_cell_mean": out / "baseline_cell_mean.csv",
        "truth": out / "test" / "truth.csv",
        "overlays": out / "overlays",
        "summary": out / "summary.json",
    }


@dataclass
class _Run:
    """One run's inputs, and what its stages record on the way (problems, seconds)."""

    config: DemoConfig
    paths: dict[str, Path]
    segmenter: ClassicalSegmenter
    log: Callable[[str], object]
    problems: dict[str, dict[str, str]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.log(f"[demo] {name} ...")
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 2)
        self.log(f"[demo] {name}: {self.seconds[name]:.1f} s")

    def record(self, name: str, failures: Mapping[str, str]) -> None:
        """Keep a stage's failures (id -> cause) for the summary; the run goes on."""
        if failures:
            self.problems[name] = dict(failures)


@dataclass(frozen=True)
class _Outcome:
    """The stages' results that the summary reports."""

    train_set: SynthDataset
    test_set: SynthDataset
    n_crops: int
    trained: Any  # hpa_kit.train.TrainResult
    predicted: Any  # hpa_kit.predict.PredictReport
    validation: Any  # hpa_kit.submission.ValidationReport
    baseline_validation: Any
    scores: dict[str, dict[str, Any]]
    segmentation: Any  # hpa_kit.segment.Matching, pooled over the test images
    overlay_files: list[Path]


def _prepare_out(out: Path) -> None:
    """Make ``out`` ready: new or empty, or an earlier demo's folder (its outputs removed)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"demo output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise UsageError(
                f"{out} is not empty and was not written by `hpa-kit demo` (no {MARKER} file); "
                "choose an empty or new folder"
            )
        for name in _OUTPUTS:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        out / MARKER, "written by hpa-kit demo; rerunning the demo replaces its outputs\n"
    )


def run_demo(
    out: str | os.PathLike,
    config: DemoConfig = DemoConfig(),  # noqa: B008 - frozen, immutable
    *,
    log: Callable[[str], object] = print,
) -> DemoResult:
    """Run the whole demo into ``out`` (see the module docstring); returns the summary.

    ``out`` must be empty, new, or a previous demo's folder (its outputs are replaced).
    ``log`` receives progress lines (``print`` by default).
    """
    import torch

    threads = torch.get_num_threads()
    if config.torch_threads is not None:
        torch.set_num_threads(config.torch_threads)
    try:
        return _run_demo(Path(out), config, log)
    finally:
        torch.set_num_threads(threads)


def _run_demo(out: Path, config: DemoConfig, log: Callable[[str], object]) -> DemoResult:
    started = time.perf_counter()
    _prepare_out(out)
    segmenter = ClassicalSegmenter(config.seg_scale, pixel_size=config.pixel_size)
    run = _Run(config=config, paths=demo_paths(out), segmenter=segmenter, log=log)
    with run.stage("synth"):
        train_set, test_set = _synth_stage(run)
    with run.stage("crops"):
        n_crops = _crops_stage(run, train_set)
    with run.stage("train"):
        trained = _train_stage(run)
    with run.stage("predict"):
        predicted, validation = _predict_stage(run, test_set, trained.best_dir)
    with run.stage("baseline"):
        baseline_validation = _baseline_stage(run, test_set, trained.best_dir)
    with run.stage("score"):
        scores, segmentation = _score_stage(run, test_set)
    with run.stage("overlays"):
        overlay_files = _overlay_stage(run, test_set)
    outcome = _Outcome(
        train_set=train_set,
        test_set=test_set,
        n_crops=n_crops,
        trained=trained,
        predicted=predicted,
        validation=validation,
        baseline_validation=baseline_validation,
        scores=scores,
        segmentation=segmentation,
        overlay_files=overlay_files,
    )
    run.seconds["total"] = round(time.perf_counter() - started, 2)
    summary = _summary(run, outcome)
    atomic_write_text(run.paths["summary"], json.dumps(summary, indent=2, default=str) + "\n")
    return DemoResult(out=out, summary=summary, paths=run.paths)


# --------------------------------------------------------------------------- stages


def _synth_stage(run: _Run) -> tuple[SynthDataset, SynthDataset]:
    """The training set (seed ``seed``) and the test set (seed ``seed + 1``)."""
    from hpa_kit.synth import write_dataset

    config, paths = run.config, run.paths
    kwargs = {"size": config.size, "config": config.synth, "progress": config.progress}
    train_set = write_dataset(
        paths["train"], n=config.n_train, seed=config.seed, id_prefix="train", **kwargs
    )
    test_set = write_dataset(
        paths["test"], n=config.n_test, seed=config.seed + 1, id_prefix="test", **kwargs
    )
    run.record("synth_train", train_set.failures)
    run.record("synth_test", test_set.failures)
    return train_set, test_set


def _crops_stage(run: _Run, train_set: SynthDataset) -> int:
    """Folds per training image, then every cell's crop with its image's labels
    (``crops/images/``, ``crops/crops.csv``); returns the number of crops."""
    import pandas as pd

    from hpa_kit.crop import write_cell_crops
    from hpa_kit.folds import make_folds

    config, paths = run.config, run.paths
    table = pd.read_csv(train_set.train_csv, dtype={"ID": str})
    table = make_folds(table, n_splits=config.n_folds, seed=config.seed)
    crops, failures = write_cell_crops(
        paths["train"] / "images",
        table,
        paths["crops"] / "images",
        segmenter=run.segmenter,
        size=config.input_size,
        margin=config.margin,
        channels=config.channels,
        progress=config.progress,
    )
    run.record("crops", failures)
    with atomic_path(paths["crops"] / "crops.csv") as temp:
        crops.to_csv(temp, index=False)
    if crops.empty or crops["fold"].nunique() < 2:
        raise RunError(
            f"too few training crops ({len(crops)}) for a train/validation split; "
            f"failures: {failures}"
        )
    if config.cell_learning == "oracle":
        _oracle_labels(run, crops)
    return len(crops)


def _oracle_labels(run: _Run, crops: pd.DataFrame) -> None:
    """``crops/crops_oracle.csv``: the crops with the true classes of the synthetic cell each
    overlaps (IoU >= 0.5; unmatched crops keep their image's labels), for ``oracle``."""
    from hpa_kit.oracle import oracle_labels

    labels, counts = oracle_labels(crops, run.paths["train"], segmenter=run.segmenter)
    with atomic_path(run.paths["crops_oracle"]) as temp:
        crops.assign(Label=labels).to_csv(temp, index=False)
    run.details["oracle"] = counts


def demo_train_config(config: DemoConfig, paths: Mapping[str, Path]) -> TrainConfig:
    """The :class:`hpa_kit.train.TrainConfig` of the demo's training stage: the crops of
    ``paths["crops"]`` (their oracle labels for ``cell_learning="oracle"``), fold 0
    validates, the best epoch by validation loss, on the CPU."""
    from hpa_kit.train import TrainConfig

    oracle = config.cell_learning == "oracle"
    return TrainConfig(
        train_csv=os.fspath(paths["crops_oracle"] if oracle else paths["crops"] / "crops.csv"),
        images_dir=os.fspath(paths["crops"] / "images"),
        out_dir=os.fspath(paths["model"]),
        fold=0,
        n_folds=config.n_folds,
        arch=config.arch,
        channels=tuple(config.channels),
        input_size=config.input_size,
        batch_size=config.batch_size,
        lr=config.lr,
        epochs=config.epochs,
        loss="bce",
        amp=False,
        seed=config.seed,
        workers=0,
        device="cpu",
        monitor="val_loss",
        progress=config.progress,
        cell_learning="image-labels" if oracle else config.cell_learning,
        pooling=config.pooling,
        refine_from=config.refine_from,
        refine_rounds=config.refine_rounds,
    )


def _train_stage(run: _Run) -> Any:
    """:func:`hpa_kit.train.fit` on the crops; returns its ``TrainResult``."""
    from hpa_kit.train import fit

    return fit(demo_train_config(run.config, run.paths))


def _predict_stage(run: _Run, test_set: SynthDataset, checkpoint: Path) -> tuple[Any, Any]:
    """``submission.csv`` of the test set, and its validation against the sample."""
    from hpa_kit.predict import PredictOptions, predict_folder
    from hpa_kit.submission import read_sample, validate_submission

    config, paths = run.config, run.paths
    options = PredictOptions(
        tta=config.tta,
        num_workers=0,
        device="cpu",
        amp=False,
        threads=config.torch_threads,  # the run's thread count, also while classifying
        progress=config.progress,
    )
    report = predict_folder(
        paths["test"] / "images",
        test_set.sample_submission,
        [checkpoint],
        out=paths["submission"],
        segmenter=run.segmenter,
        options=options,
    )
    run.record("predict", report.failures)
    run.record("no_cells", {i: "no cell found (placeholder row)" for i in report.no_cells})
    validation = validate_submission(paths["submission"], read_sample(test_set.sample_submission))
    return report, validation


def _baseline_stage(run: _Run, test_set: SynthDataset, checkpoint: Path) -> Any:
    """``baseline.csv`` and ``baseline_cell_mean.csv`` on the cells of ``submission.csv``;
    returns the validation of ``baseline.csv``."""
    from hpa_kit.baselines import cell_mean_baseline, image_baseline, whole_image_probs
    from hpa_kit.model import load_classifier
    from hpa_kit.submission import (
        read_sample,
        read_submission,
        validate_submission,
        write_submission,
    )

    paths = run.paths
    model, model_config = load_classifier(checkpoint, device="cpu")
    submission = read_submission(paths["submission"])
    image_probs = whole_image_probs(
        paths["test"] / "images", list(submission["ID"]), model, model_config, tta=run.config.tta
    )
    sample = read_sample(test_set.sample_submission)
    write_submission(paths["baseline"], image_baseline(submission, image_probs), sample)
    write_submission(paths["baseline_cell_mean"], cell_mean_baseline(submission), sample)
    return validate_submission(paths["baseline"], sample)


_SCORED = (
    ("cells", "submission"),
    ("baseline", "baseline"),
    ("baseline_cell_mean", "baseline_cell_mean"),
)


def _score_stage(run: _Run, test_set: SynthDataset) -> tuple[dict[str, dict[str, Any]], Any]:
    """The metric of the three files against ``truth.csv``, and the cells of
    ``submission.csv`` matched to the true cells (IoU >= 0.6, pooled over images)."""
    from hpa_kit.io import read_label_image
    from hpa_kit.metric import score_submission
    from hpa_kit.segment import match_dataset
    from hpa_kit.submission import prediction_label_image, read_submission

    paths = run.paths
    scores = {name: score_submission(paths[key], test_set.truth).to_dict() for name, key in _SCORED}
    rows = read_submission(paths["submission"]).itertuples(index=False)
    pairs = (
        (
            read_label_image(paths["test"] / "masks" / f"{row.ID}_cells.png"),
            prediction_label_image(row.PredictionString, int(row.ImageHeight), int(row.ImageWidth))[
                0
            ],
        )
        for row in rows
    )
    return scores, match_dataset(pairs, threshold=SEGMENTATION_IOU)


def _overlay_stage(run: _Run, test_set: SynthDataset) -> list[Path]:
    """``overlays/{id}.png`` of the first ``config.overlays`` test images: predicted cells
    and their top-2 classes (left) beside the true cells and classes (right), titled
    (:func:`hpa_kit.viz.prediction_vs_truth`)."""
    from hpa_kit.io import read_image
    from hpa_kit.submission import read_submission
    from hpa_kit.viz import prediction_vs_truth, save_png

    paths = run.paths
    submission = read_submission(paths["submission"])
    truth = read_submission(test_set.truth).set_index("ID")["PredictionString"]
    files = []
    for row in submission.head(run.config.overlays).itertuples(index=False):
        image = read_image(paths["test"] / "images", row.ID, channels=CHANNELS)
        picture = prediction_vs_truth(image, row.PredictionString, truth.loc[row.ID])
        files.append(save_png(paths["overlays"] / f"{row.ID}.png", picture))
    return files


# --------------------------------------------------------------------------- the summary


def _summary(run: _Run, outcome: _Outcome) -> dict[str, Any]:
    """``summary.json``: scores, segmentation, validity, counts, training, seconds, paths."""
    scores, seg = outcome.scores, outcome.segmentation
    return {
        "map": scores["cells"]["map"],
        "baseline_map": scores["baseline"]["map"],
        "baseline_cell_mean_map": scores["baseline_cell_mean"]["map"],
        "gain": gain_over_baselines(scores),
        "segmentation": {
            key: getattr(seg, key)
            for key in (
                "threshold",
                "f1",
                "precision",
                "recall",
                "mean_iou",
                "n_true",
                "n_pred",
                "tp",
            )
        },
        "scores": scores,
        "submission_valid": outcome.validation.ok,
        "baseline_valid": outcome.baseline_validation.ok,
        "validation_problems": dict(outcome.validation.problems),
        "counts": {
            "train_images": len(outcome.train_set.ids),
            "train_cells_true": outcome.train_set.num_cells,
            "train_crops": outcome.n_crops,
            "test_images": len(outcome.test_set.ids),
            "test_cells_true": outcome.test_set.num_cells,
            "test_cells_found": outcome.predicted.cells,
        },
        "cell_learning": run.config.cell_learning,
        "preset": run.config.preset,
        **run.details,
        "training": _training_summary(outcome.trained),
        "tta": run.config.tta,
        "segmenter": repr(run.segmenter),
        "torch_threads": run.config.torch_threads,
        "torch": torch_kernels(),
        "seconds": dict(run.seconds),
        "problems": run.problems,
        "paths": {k: os.fspath(v) for k, v in run.paths.items()}
        | {
            "checkpoint": os.fspath(outcome.trained.best_dir),
            "overlay_files": [os.fspath(p) for p in outcome.overlay_files],
        },
        "config": run.config.to_dict(),
    }


def gain_over_baselines(scores: Mapping[str, Mapping[str, Any]]) -> float:
    """The demo's claim: per-cell mAP minus the better of the two baselines' mAPs.

    >>> scores = {"cells": {"map": 0.75}, "baseline": {"map": 0.5},
    ...           "baseline_cell_mean": {"map": 0.625}}
    >>> gain_over_baselines(scores)
    0.125
    """
    better = max(scores["baseline"]["map"], scores["baseline_cell_mean"]["map"])
    return scores["cells"]["map"] - better


def torch_kernels() -> dict[str, str | None]:
    """The torch version and the CPU kernel set its operators dispatch to
    (``torch.backends.cpu.get_cpu_capability()``: ``DEFAULT``, ``AVX2``, ``AVX512``, ...),
    with the ``ATEN_CPU_CAPABILITY`` environment variable that can lower it (None when unset).
    Training on the CPU rounds differently under each kernel set, so the demo's scores are
    reproducible for one kernel set, not across them."""
    import torch

    return {
        "version": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "aten_cpu_capability": os.environ.get("ATEN_CPU_CAPABILITY"),
    }


def _training_summary(trained: Any) -> dict[str, Any]:
    keys = ("epoch", "train_loss", "val_loss", "macro_f1", "micro_f1")
    if any("stage" in row for row in trained.history):  # refined: stage0, round1, ...
        keys = ("stage", *keys)
    return {
        "epochs": trained.epochs_done,
        "best_epoch": trained.best_epoch,
        "best_val_loss": trained.best_score,
        "history": [{k: row.get(k) for k in keys} for row in trained.history],
    }


def format_summary(summary: Mapping[str, Any]) -> str:
    """The printed table of a demo summary: scores, segmentation, torch, seconds, paths."""
    return "\n".join(
        [
            "hpa-kit demo: synthetic HPA-like data, classical segmentation, CPU classifier",
            "",
            *_score_lines(summary),
            "",
            "  seconds per stage: "
            + ", ".join(f"{k} {v:.1f}" for k, v in summary["seconds"].items()),
            *_problem_lines(summary.get("problems", {})),
            "",
            *_output_lines(summary["paths"]),
        ]
    )


def _score_lines(summary: Mapping[str, Any]) -> list[str]:
    seg = summary["segmentation"]
    counts = summary["counts"]
    torch_info = summary["torch"]
    env = torch_info["aten_cpu_capability"]
    rows = [
        ("mAP, per-cell classification (submission.csv)", f"{summary['map']:.4f}"),
        ("mAP, baseline: whole-image confidence per cell", f"{summary['baseline_map']:.4f}"),
        (
            "mAP, baseline: mean cell confidence per image",
            f"{summary['baseline_cell_mean_map']:.4f}",
        ),
        ("per-cell gain over the better baseline", f"{summary['gain']:+.4f}"),
        (
            f"segmentation F1 vs truth (IoU >= {seg['threshold']})",
            f"{seg['f1']:.4f}  ({seg['tp']} of {seg['n_true']} true cells matched, "
            f"{seg['n_pred']} found, mean IoU {seg['mean_iou']:.3f})",
        ),
        ("submission.csv valid", str(summary["submission_valid"])),
        (
            "data",
            f"{counts['train_images']} train images -> {counts['train_crops']} crops; "
            f"{counts['test_images']} test images",
        ),
        ("TTA", summary["tta"]),
        (
            "cell learning (preset)",
            f"{summary['cell_learning']} ({summary['preset'] or 'none'})",
        ),
        (
            "torch, CPU kernels",
            f"{torch_info['version']}, {torch_info['cpu_capability']} "
            f"(ATEN_CPU_CAPABILITY={env if env is not None else 'unset'})",
        ),
    ]
    return [f"  {name:<52} {value}" for name, value in rows]


def _problem_lines(problems: Mapping[str, Mapping[str, str]]) -> list[str]:
    if not problems:
        return []
    lines = ["", "  problems (recorded, the run went on):"]
    for stage, items in problems.items():
        lines += [f"    {stage}: {key}: {cause}" for key, cause in items.items()]
    return lines


def _output_lines(paths: Mapping[str, Any]) -> list[str]:
    return [
        "  outputs:",
        f"    submission       {paths['submission']}",
        f"    baselines        {paths['baseline']}, {paths['baseline_cell_mean']}",
        f"    truth            {paths['truth']}",
        f"    checkpoint       {paths['checkpoint']}",
        f"    overlays         {', '.join(paths['overlay_files']) or '(none)'}",
        f"    summary          {paths['summary']}",
        f"    synthetic data   {paths['train']}, {paths['test']}",
    ]

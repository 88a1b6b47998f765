"""TrainConfig: every switch of a training run, in one frozen dataclass (no torch import)."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpa_kit.augment import channel_names
from hpa_kit.errors import UsageError
from hpa_kit.labels import NUM_CLASSES

__all__ = ["CELL_LEARNING", "MONITORS", "TrainConfig", "parse_override"]

# metric name -> the direction that is better
MONITORS: dict[str, str] = {
    "val_loss": "min",
    "macro_f1": "max",
    "micro_f1": "max",
    "train_loss": "min",
}
_LOSSES = ("focal", "bce")
CELL_LEARNING: tuple[str, ...] = ("image-labels", "bags", "refined")
"""``image-labels``: every row (crop) trained on its own ``Label``; ``bags``: rows sharing
``bag_column`` form a bag trained on its label through a pooling (:mod:`hpa_kit.mil`);
``refined``: ``refine_from`` first, then ``refine_rounds`` rounds of row training on soft
labels the previous model gives (:mod:`hpa_kit.pseudo`)."""
# Fields that may change between an interrupted run and its resume (out_dir: a run folder
# copied elsewhere, e.g. from a Kaggle dataset into the working folder, resumes there).
RESUME_FREE_FIELDS = frozenset(
    {"resume", "stop_after_epochs", "workers", "progress", "images_dir", "cache_dir", "device"}
    | {"out_dir"}
)


def _class_map(value: Any, name: str) -> dict[int, float]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise UsageError(f"{name} must be a mapping class -> value, got {value!r}")
    out: dict[int, float] = {}
    for key, item in value.items():
        try:
            index = int(key)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"{name}: class {key!r} is not an integer") from exc
        if not 0 <= index < NUM_CLASSES:
            raise UsageError(f"{name}: class {index} is out of range 0..{NUM_CLASSES - 1}")
        out[index] = float(item)
    return dict(sorted(out.items()))


def _limit(value: Any, name: str) -> int | float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise UsageError(f"{name} must be a count (int >= 1) or a fraction (0 < float <= 1)")
    if isinstance(value, int):
        if value < 1:
            raise UsageError(f"{name} as a count must be >= 1, got {value}")
        return value
    try:
        value = float(value)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{name} must be a count or a fraction, got {value!r}") from exc
    if not 0.0 < value <= 1.0:
        raise UsageError(f"{name} as a fraction must be in (0, 1], got {value}")
    return value


def _set(config: Any, name: str, value: Any) -> None:
    object.__setattr__(config, name, value)


def _int_at_least(value: Any, name: str, low: int, *, optional: bool = False) -> int | None:
    if optional and value is None:
        return None
    whole = isinstance(value, (int, float)) and not isinstance(value, bool) and value == int(value)
    if not whole or value < low:
        allowed = f"None or an int >= {low}" if optional else f"an int >= {low}"
        raise UsageError(f"{name} must be {allowed}, got {value!r}")
    return int(value)


# PyYAML reads "6e-4" (no dot) as a string: these fields are coerced to float.
_FLOAT_FIELDS = (
    "lr",
    "weight_decay",
    "min_lr",
    "alpha",
    "gamma",
    "threshold",
    "clip_grad_norm",
    "pool_temperature",
    "refine_floor",
)
# field -> smallest allowed value (ints), and the optional ones (None allowed)
_INT_FIELDS = {
    "n_folds": 2,
    "input_size": 8,
    "batch_size": 1,
    "epochs": 1,
    "accumulation": 1,
    "refine_rounds": 1,
}
_OPTIONAL_INT_FIELDS = {
    "read_size": 1,
    "val_batch_size": 1,
    "stop_after_epochs": 1,
    "bags_per_batch": 1,
}
_COUNT_FIELDS = ("workers", "warmup_steps", "seed", "fold")


def _check_paths(config: Any) -> None:
    for name in ("train_csv", "images_dir", "out_dir"):
        value = getattr(config, name)
        if value is None or str(value) == "":
            raise UsageError(f"{name} is required")
        _set(config, name, str(value))
    if config.cache_dir is not None:
        _set(config, "cache_dir", str(config.cache_dir))
    try:
        _set(config, "channels", channel_names(config.channels))
    except ValueError as exc:
        raise UsageError(f"channels: {exc}") from exc
    for name in ("mean", "std"):
        value = getattr(config, name)
        if value is not None:
            value = tuple(float(v) for v in value)
            if len(value) != len(config.channels):
                raise UsageError(
                    f"{name} needs one value per channel {config.channels}, got {list(value)}"
                )
            _set(config, name, value)


def _check_numbers(config: Any) -> None:
    for name in _FLOAT_FIELDS:
        value = getattr(config, name)
        if value is None and name == "clip_grad_norm":
            continue
        try:
            number = float(value)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"{name} must be a number, got {value!r}") from exc
        if not math.isfinite(number):
            raise UsageError(f"{name} must be finite, got {value!r}")
        _set(config, name, number)
    for name, low in _INT_FIELDS.items():
        _set(config, name, _int_at_least(getattr(config, name), name, low))
    for name, low in _OPTIONAL_INT_FIELDS.items():
        _set(config, name, _int_at_least(getattr(config, name), name, low, optional=True))
    for name in _COUNT_FIELDS:
        _set(config, name, _int_at_least(getattr(config, name), name, 0))
    if config.fold >= config.n_folds:
        raise UsageError(f"fold must be in 0..{config.n_folds - 1}, got {config.fold}")


def _check_optimisation(config: Any) -> None:
    if config.lr <= 0 or config.weight_decay < 0 or not 0 <= config.min_lr <= config.lr:
        raise UsageError(
            f"need lr > 0, weight_decay >= 0, 0 <= min_lr <= lr; got lr={config.lr}, "
            f"weight_decay={config.weight_decay}, min_lr={config.min_lr}"
        )
    if config.clip_grad_norm is not None and config.clip_grad_norm <= 0:
        raise UsageError(f"clip_grad_norm must be None or > 0, got {config.clip_grad_norm}")


def _check_loss(config: Any) -> None:
    if config.loss not in _LOSSES:
        raise UsageError(f"loss must be one of {_LOSSES}, got {config.loss!r}")
    _set(config, "class_alpha", _class_map(config.class_alpha, "class_alpha"))
    _set(config, "class_gamma", _class_map(config.class_gamma, "class_gamma"))
    if config.loss == "bce" and (
        config.alpha != 0.5 or config.gamma != 0.0 or config.class_alpha or config.class_gamma
    ):
        raise UsageError(
            "loss 'bce' is the focal loss with alpha=0.5, gamma=0 (half of torch BCE); "
            "set loss: focal to use alpha, gamma, class_alpha or class_gamma"
        )
    alphas = [config.alpha, *config.class_alpha.values()]
    gammas = [config.gamma, *config.class_gamma.values()]
    if any(not 0.0 <= a <= 1.0 for a in alphas) or any(g < 0 for g in gammas):
        raise UsageError(f"alpha values must be in [0, 1] and gamma >= 0: {alphas}, {gammas}")


def _check_monitor(config: Any) -> None:
    if config.monitor not in MONITORS:
        raise UsageError(f"monitor must be one of {sorted(MONITORS)}, got {config.monitor!r}")
    if config.monitor_mode not in (None, "min", "max"):
        raise UsageError(f"monitor_mode must be 'min', 'max' or null, got {config.monitor_mode!r}")
    if not 0.0 < config.threshold < 1.0:
        raise UsageError(f"threshold must be in (0, 1), got {config.threshold}")


def _check_cell_learning(config: Any) -> None:
    from hpa_kit.mil import POOLINGS

    if config.cell_learning not in CELL_LEARNING:
        raise UsageError(
            f"cell_learning must be one of {CELL_LEARNING}, got {config.cell_learning!r}"
        )
    if config.pooling not in POOLINGS:
        raise UsageError(f"pooling must be one of {POOLINGS}, got {config.pooling!r}")
    if config.pool_temperature <= 0:
        raise UsageError(f"pool_temperature must be > 0, got {config.pool_temperature}")
    if config.refine_from not in CELL_LEARNING[:2]:
        raise UsageError(
            f"refine_from must be one of {CELL_LEARNING[:2]}, got {config.refine_from!r}"
        )
    if not 0.0 <= config.refine_floor <= 1.0:
        raise UsageError(f"refine_floor must be in [0, 1], got {config.refine_floor}")
    if not config.bag_column or not isinstance(config.bag_column, str):
        raise UsageError(f"bag_column must name a column, got {config.bag_column!r}")
    if config.init_from is not None:
        _set(config, "init_from", str(config.init_from))
    if config.soft_labels is not None:
        if config.cell_learning != "image-labels":
            raise UsageError(
                "soft_labels trains rows on given targets: it needs cell_learning "
                f"'image-labels', got {config.cell_learning!r}"
            )
        _set(config, "soft_labels", str(config.soft_labels))


@dataclass(frozen=True)
class TrainConfig:
    """One training run (one fold). Defaults reproduce the seed's efficientnet_b0 recipe.

    See the README section "Training a classifier" for every field.

    >>> cfg = TrainConfig(train_csv="t.csv", images_dir="img", out_dir="runs/f0")
    >>> cfg.arch, cfg.batch_size, cfg.lr, cfg.epochs, cfg.channels
    ('efficientnet_b0', 16, 0.0006, 5, ('red', 'green', 'blue'))
    >>> cfg.mode
    'min'
    """

    # data
    train_csv: str
    images_dir: str
    out_dir: str
    fold: int = 0
    n_folds: int = 5
    folds_column: str = "fold"
    cache_dir: str | None = None
    write_cache: bool = False
    limit_train: int | float | None = None
    limit_val: int | float | None = None
    # model and inputs
    arch: str = "efficientnet_b0"
    pretrained: bool = False
    channels: tuple[str, ...] = ("red", "green", "blue")
    input_size: int = 512
    read_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    # optimisation
    batch_size: int = 16
    val_batch_size: int | None = None
    lr: float = 6e-4
    weight_decay: float = 1e-5
    epochs: int = 5
    warmup_steps: int = 0
    min_lr: float = 0.0
    accumulation: int = 1
    clip_grad_norm: float | None = None
    loss: str = "bce"
    alpha: float = 0.5
    gamma: float = 0.0
    class_alpha: Mapping[int, float] = field(default_factory=dict)
    class_gamma: Mapping[int, float] = field(default_factory=dict)
    amp: bool = True
    # cell learning: how cell crops learn from their image's labels (hpa_kit.mil, .pseudo)
    cell_learning: str = "image-labels"
    bag_column: str = "image"
    bags_per_batch: int | None = None
    pooling: str = "lse"
    pool_temperature: float = 1.0
    refine_from: str = "image-labels"
    refine_rounds: int = 2
    refine_floor: float = 0.0
    soft_labels: str | None = None
    init_from: str | None = None
    # run control
    seed: int = 0
    workers: int = 2
    device: str = "auto"
    monitor: str = "val_loss"
    monitor_mode: str | None = None
    threshold: float = 0.5
    stop_after_epochs: int | None = None
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        _check_paths(self)
        _check_numbers(self)
        _check_optimisation(self)
        _check_loss(self)
        _check_monitor(self)
        _check_cell_learning(self)
        _set(self, "limit_train", _limit(self.limit_train, "limit_train"))
        _set(self, "limit_val", _limit(self.limit_val, "limit_val"))

    @property
    def mode(self) -> str:
        """``"min"`` or ``"max"``: which direction of :attr:`monitor` is better."""
        return self.monitor_mode or MONITORS[self.monitor]

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key in ("channels", "mean", "std"):
            if out[key] is not None:
                out[key] = list(out[key])
        for key in ("class_alpha", "class_gamma"):
            out[key] = {str(k): v for k, v in out[key].items()}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise UsageError(f"unknown TrainConfig keys {unknown}; valid keys: {names}")
        return cls(**dict(data))

    @classmethod
    def from_file(
        cls, path: str | Path, *, overrides: Sequence[str] | Mapping[str, Any] = ()
    ) -> TrainConfig:
        """Read a YAML (``.yaml``/``.yml``) or JSON file, then apply ``overrides``.

        ``overrides``: ``{"key": value}`` or ``["key=value", ...]`` (values parsed as YAML,
        so ``lr=1e-3``, ``channels=[red,green,blue,yellow]``, ``clip_grad_norm=null``).
        """
        path = Path(path)
        if not path.is_file():
            what = "is not a file" if path.exists() else "does not exist"
            raise UsageError(f"training config {path} {what}")
        try:
            text = path.read_text()
        except UnicodeDecodeError as exc:
            raise UsageError(f"training config {path} is not text: {exc}") from exc
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise UsageError(f"{path} is not valid YAML: {exc}") from exc
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise UsageError(f"{path} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise UsageError(f"{path} must hold a mapping of TrainConfig fields, got {type(data)}")
        if isinstance(overrides, Mapping):
            data.update(overrides)
        else:
            data.update(dict(parse_override(item) for item in overrides))
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"{path}: {exc}") from exc

    def unused_fields(self) -> frozenset[str]:
        """Fields that do not change a run of this ``cell_learning`` (ignored on resume).

        >>> sorted(TrainConfig(train_csv="t", images_dir="i", out_dir="o").unused_fields())[:3]
        ['bags_per_batch', 'pool_temperature', 'pooling']
        """
        bags = {"bags_per_batch", "pooling", "pool_temperature"}
        refine = {"refine_from", "refine_rounds", "refine_floor"}
        if self.cell_learning == "image-labels":
            return frozenset(bags | refine)
        if self.cell_learning == "bags":
            return frozenset(refine)
        return frozenset(bags) if self.refine_from == "image-labels" else frozenset()

    @classmethod
    def field_defaults(cls) -> dict[str, Any]:
        """``{field: default}`` of the fields that have one (as :meth:`to_dict` writes them)."""
        out = {}
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                out[f.name] = list(f.default) if isinstance(f.default, tuple) else f.default
            elif f.default_factory is not dataclasses.MISSING:
                out[f.name] = f.default_factory()
        return out

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def parse_override(text: str) -> tuple[str, Any]:
    """``"key=value"`` -> ``(key, value parsed as YAML)``.

    >>> parse_override("lr=1e-3"), parse_override("channels=[red, green]")
    (('lr', 0.001), ('channels', ['red', 'green']))
    """
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"override must look like key=value, got {text!r}")
    value = value.strip()
    for number in (int, float):  # PyYAML would read "1e-3" as a string
        try:
            return key.strip(), number(value)
        except ValueError:
            pass
    try:
        return key.strip(), (yaml.safe_load(value) if value else None)
    except yaml.YAMLError as exc:
        raise UsageError(f"override {text!r}: the value is not valid YAML ({exc})") from exc

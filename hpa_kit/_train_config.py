"""TrainConfig: every switch of a training run, in one frozen dataclass (no torch import)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpa_kit.augment import channel_names
from hpa_kit.labels import NUM_CLASSES

__all__ = ["MONITORS", "TrainConfig", "parse_override"]

# metric name -> the direction that is better
MONITORS: dict[str, str] = {
    "val_loss": "min",
    "macro_f1": "max",
    "micro_f1": "max",
    "train_loss": "min",
}
_LOSSES = ("focal", "bce")
# Fields that may change between an interrupted run and its resume.
RESUME_FREE_FIELDS = frozenset(
    {"resume", "stop_after_epochs", "workers", "progress", "images_dir", "cache_dir", "device"}
)


def _class_map(value: Any, name: str) -> dict[int, float]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{name} must be a mapping class -> value, got {value!r}")
    out: dict[int, float] = {}
    for key, item in value.items():
        try:
            index = int(key)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name}: class {key!r} is not an integer") from exc
        if not 0 <= index < NUM_CLASSES:
            raise ValueError(f"{name}: class {index} is out of range 0..{NUM_CLASSES - 1}")
        out[index] = float(item)
    return dict(sorted(out.items()))


def _limit(value: Any, name: str) -> int | float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a count (int >= 1) or a fraction (0 < float <= 1)")
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"{name} as a count must be >= 1, got {value}")
        return value
    value = float(value)
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{name} as a fraction must be in (0, 1], got {value}")
    return value


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
        for name in ("train_csv", "images_dir", "out_dir"):
            value = getattr(self, name)
            if value is None or str(value) == "":
                raise ValueError(f"{name} is required")
            object.__setattr__(self, name, str(value))
        if self.cache_dir is not None:
            object.__setattr__(self, "cache_dir", str(self.cache_dir))
        object.__setattr__(self, "channels", channel_names(self.channels))
        # PyYAML reads "6e-4" (no dot) as a string: coerce the float fields here.
        for name in (
            "lr",
            "weight_decay",
            "min_lr",
            "alpha",
            "gamma",
            "threshold",
            "clip_grad_norm",
        ):
            value = getattr(self, name)
            if value is None and name == "clip_grad_norm":
                continue
            try:
                object.__setattr__(self, name, float(value))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{name} must be a number, got {value!r}") from exc
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                value = tuple(float(v) for v in value)
                if len(value) != len(self.channels):
                    raise ValueError(
                        f"{name} needs one value per channel {self.channels}, got {list(value)}"
                    )
                object.__setattr__(self, name, value)
        _positive = {
            "n_folds": 2,
            "input_size": 8,
            "batch_size": 1,
            "epochs": 1,
            "accumulation": 1,
        }
        for name, low in _positive.items():
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
            object.__setattr__(self, name, int(value))
        for name in ("read_size", "val_batch_size", "stop_after_epochs"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or int(value) != value or value < 1):
                raise ValueError(f"{name} must be None or an int >= 1, got {value!r}")
        if not 0 <= int(self.fold) < self.n_folds:
            raise ValueError(f"fold must be in 0..{self.n_folds - 1}, got {self.fold}")
        if self.workers < 0 or self.warmup_steps < 0:
            raise ValueError("workers and warmup_steps must be >= 0")
        if self.lr <= 0 or self.weight_decay < 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ValueError(
                f"need lr > 0, weight_decay >= 0, 0 <= min_lr <= lr; got lr={self.lr}, "
                f"weight_decay={self.weight_decay}, min_lr={self.min_lr}"
            )
        if self.clip_grad_norm is not None and self.clip_grad_norm <= 0:
            raise ValueError(f"clip_grad_norm must be None or > 0, got {self.clip_grad_norm}")
        if self.loss not in _LOSSES:
            raise ValueError(f"loss must be one of {_LOSSES}, got {self.loss!r}")
        object.__setattr__(self, "class_alpha", _class_map(self.class_alpha, "class_alpha"))
        object.__setattr__(self, "class_gamma", _class_map(self.class_gamma, "class_gamma"))
        if self.loss == "bce" and (
            self.alpha != 0.5 or self.gamma != 0.0 or self.class_alpha or self.class_gamma
        ):
            raise ValueError(
                "loss 'bce' is the focal loss with alpha=0.5, gamma=0 (half of torch BCE); "
                "set loss: focal to use alpha, gamma, class_alpha or class_gamma"
            )
        alphas = [self.alpha, *self.class_alpha.values()]
        gammas = [self.gamma, *self.class_gamma.values()]
        if any(not 0.0 <= a <= 1.0 for a in alphas) or any(g < 0 for g in gammas):
            raise ValueError(f"alpha values must be in [0, 1] and gamma >= 0: {alphas}, {gammas}")
        if self.monitor not in MONITORS:
            raise ValueError(f"monitor must be one of {sorted(MONITORS)}, got {self.monitor!r}")
        if self.monitor_mode not in (None, "min", "max"):
            raise ValueError(
                f"monitor_mode must be 'min', 'max' or null, got {self.monitor_mode!r}"
            )
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        object.__setattr__(self, "limit_train", _limit(self.limit_train, "limit_train"))
        object.__setattr__(self, "limit_val", _limit(self.limit_val, "limit_val"))

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
            raise ValueError(f"unknown TrainConfig keys {unknown}; valid keys: {names}")
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
            raise FileNotFoundError(f"training config {path} does not exist")
        text = path.read_text()
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise ValueError(f"{path} is not valid YAML: {exc}") from exc
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a mapping of TrainConfig fields, got {type(data)}")
        if isinstance(overrides, Mapping):
            data.update(overrides)
        else:
            data.update(dict(parse_override(item) for item in overrides))
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: {exc}") from exc

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
        raise ValueError(f"override must look like key=value, got {text!r}")
    value = value.strip()
    for number in (int, float):  # PyYAML would read "1e-3" as a string
        try:
            return key.strip(), number(value)
        except ValueError:
            pass
    return key.strip(), (yaml.safe_load(value) if value else None)

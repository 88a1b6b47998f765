"""Image-level classifiers and their self-describing checkpoints.

A checkpoint is a directory holding two files:

- ``model.pt``: the ``state_dict`` of a timm model (tensors only; loads with
  ``torch.load(..., weights_only=True)``);
- ``config.json``: a :class:`ClassifierConfig` as JSON: the timm architecture, the input
  channels and their order, the square input size, per-channel mean/std (fractions of 255),
  the class names, the fold and any metrics.

:func:`load_classifier` rebuilds the network from ``config.json`` alone with
``timm.create_model(arch, pretrained=False)``: no network access is ever needed. A training
run may also write ``train_state.pt`` (optimizer, scheduler, epoch) beside them for resuming;
prediction ignores it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpa_kit.io import (
    CHANNEL_MEAN,
    CHANNEL_STD,
    CHANNELS,
    atomic_path,
    check_channels,
    check_normalisation,
)
from hpa_kit.labels import CLASS_NAMES

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "CHANNEL_MEAN",
    "CHANNEL_STD",
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "ClassifierConfig",
    "build_classifier",
    "load_classifier",
    "read_config",
    "save_checkpoint",
]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.pt"


@dataclass(frozen=True)
class ClassifierConfig:
    """How a classifier's inputs must look, and where it came from.

    ``channels`` names the input planes in order (``("red", "green", "blue")`` or the four
    with ``"yellow"``); ``mean`` and ``std`` default to the seed's values for those channels
    (:data:`CHANNEL_MEAN`, :data:`CHANNEL_STD`, kept in :mod:`hpa_kit.io` with the checks).

    >>> cfg = ClassifierConfig(arch="resnet18", channels=("red", "green", "blue"), input_size=64)
    >>> cfg.in_chans, cfg.mean
    (3, (0.0807, 0.0524, 0.0539))
    >>> ClassifierConfig.from_dict(cfg.to_dict()) == cfg
    True
    """

    arch: str
    channels: tuple[str, ...] = CHANNELS[:3]
    input_size: int = 512
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    class_names: tuple[str, ...] = CLASS_NAMES
    fold: int | None = None
    metrics: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        channels = check_channels(self.channels)
        mean, std = check_normalisation(channels, self.mean, self.std)
        object.__setattr__(self, "channels", channels)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        object.__setattr__(self, "class_names", tuple(self.class_names))
        object.__setattr__(self, "metrics", dict(self.metrics))
        if int(self.input_size) < 8:
            raise ValueError(f"input_size must be at least 8, got {self.input_size}")
        object.__setattr__(self, "input_size", int(self.input_size))

    @property
    def in_chans(self) -> int:
        return len(self.channels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key in ("channels", "mean", "std", "class_names"):
            out[key] = list(out[key])
        out["metrics"] = dict(self.metrics)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClassifierConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown classifier config keys: {unknown}")
        if "arch" not in data:
            raise ValueError("classifier config lacks 'arch'")
        return cls(**dict(data))

    def replace(self, **changes: Any) -> ClassifierConfig:
        return dataclasses.replace(self, **changes)


def _require_timm():
    try:
        import timm
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("hpa_kit.model needs timm: pip install timm") from exc
    return timm


def build_classifier(
    arch: str, in_chans: int, num_classes: int = len(CLASS_NAMES), *, pretrained: bool = False
) -> torch.nn.Module:
    """A timm classifier with ``in_chans`` inputs and ``num_classes`` logits.

    ``pretrained=False`` (the default) never touches the network; pass ``True`` only where
    timm can download or find cached weights.
    """
    timm = _require_timm()
    return timm.create_model(
        arch, pretrained=pretrained, in_chans=in_chans, num_classes=num_classes
    )


def save_checkpoint(path: str | Path, model: torch.nn.Module, config: ClassifierConfig) -> Path:
    """Write ``model.pt`` (state dict) and ``config.json`` into directory ``path``."""
    import torch

    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    module = getattr(model, "module", model)  # unwrap DataParallel / DDP
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    with atomic_path(directory / WEIGHTS_FILE) as temp:
        torch.save(state, temp)
    with atomic_path(directory / CONFIG_FILE) as temp:
        temp.write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")
    return directory


def read_config(path: str | Path) -> ClassifierConfig:
    """The :class:`ClassifierConfig` of a checkpoint directory (or its ``config.json``)."""
    path = Path(path)
    cfg_path = path if path.is_file() else path / CONFIG_FILE
    if not cfg_path.is_file():
        raise FileNotFoundError(f"no {CONFIG_FILE} in checkpoint {path}")
    try:
        data = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{cfg_path} is not valid JSON: {exc}") from exc
    return ClassifierConfig.from_dict(data)


def load_classifier(
    path: str | Path, *, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, ClassifierConfig]:
    """Rebuild a classifier from a checkpoint directory; returns ``(model.eval(), config)``."""
    import torch

    directory = Path(path)
    if directory.is_file():
        directory = directory.parent
    config = read_config(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"no {WEIGHTS_FILE} in checkpoint {directory}")
    model = build_classifier(config.arch, config.in_chans, config.num_classes)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(
            f"checkpoint {directory}: weights do not fit {config.arch} with "
            f"{config.in_chans} channels and {config.num_classes} classes: {exc}"
        ) from exc
    return model.to(device).eval(), config

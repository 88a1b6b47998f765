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
prediction ignores it. Both files are written atomically (:func:`hpa_kit.outputs.atomic_path`).

A checkpoint that cannot be used raises :class:`CheckpointError` (a
:class:`hpa_kit.errors.UsageError`: ``hpa-kit predict`` exits 2 with one line) naming the
folder and the cause: a missing folder or file (:class:`MissingCheckpointError`, also a
``FileNotFoundError``), a ``config.json`` that is not a valid config, a ``model.pt`` that is
truncated or not a state dict, an architecture timm does not know, weights of other shapes.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpa_kit.errors import UsageError, describe
from hpa_kit.io import CHANNEL_MEAN, CHANNEL_STD, CHANNELS, check_channels, check_normalisation
from hpa_kit.labels import CLASS_NAMES
from hpa_kit.outputs import atomic_path, atomic_write_text

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "CHANNEL_MEAN",
    "CHANNEL_STD",
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "CheckpointError",
    "ClassifierConfig",
    "MissingCheckpointError",
    "build_classifier",
    "load_classifier",
    "read_config",
    "save_checkpoint",
]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.pt"


class CheckpointError(UsageError):
    """A checkpoint folder that cannot be loaded; the message names the folder and the cause."""


class MissingCheckpointError(CheckpointError, FileNotFoundError):
    """The checkpoint folder, its ``config.json`` or its ``model.pt`` does not exist."""


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
        if not isinstance(self.arch, str) or not self.arch.strip():
            raise ValueError(f"arch must be the name of a timm architecture, got {self.arch!r}")
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
    with atomic_path(directory / WEIGHTS_FILE) as temp, open(temp, "wb") as handle:
        # Through a file object: torch names the archive inside after a path it is given, and
        # the temporary name would make two saves of the same weights differ in their bytes.
        torch.save(state, handle)
    atomic_write_text(
        directory / CONFIG_FILE, json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n"
    )
    return directory


def read_config(path: str | Path) -> ClassifierConfig:
    """The :class:`ClassifierConfig` of a checkpoint directory (or its ``config.json``).

    Raises :class:`CheckpointError` (:class:`MissingCheckpointError` for a missing folder or
    file) naming the checkpoint and the cause.
    """
    path = Path(path)
    cfg_path = path if path.is_file() else path / CONFIG_FILE
    directory = cfg_path.parent
    if not directory.exists():
        raise MissingCheckpointError(f"checkpoint folder not found: {directory}")
    if not cfg_path.is_file():
        raise MissingCheckpointError(
            f"checkpoint {directory}: no {CONFIG_FILE} (a checkpoint folder holds {CONFIG_FILE} "
            f"and {WEIGHTS_FILE}, as save_checkpoint and hpa-kit train write them)"
        )
    data = _read_json(cfg_path)
    try:
        return ClassifierConfig.from_dict(data)
    except (ValueError, TypeError, ArithmeticError) as exc:
        raise CheckpointError(
            f"checkpoint {directory}: {cfg_path.name} is not a classifier config: {_short(exc)}"
        ) from exc


_CONFIG_LIMIT = 1 << 20  # a config.json is a few kB


def _read_json(cfg_path: Path) -> dict[str, Any]:
    """The JSON object in ``cfg_path``, or a :class:`CheckpointError` saying why not."""
    where = f"checkpoint {cfg_path.parent}: {cfg_path.name}"
    try:
        with open(cfg_path, "rb") as handle:
            raw = handle.read(_CONFIG_LIMIT + 1)
    except OSError as exc:
        raise CheckpointError(f"{where} cannot be read: {describe(exc)}") from exc
    if len(raw) > _CONFIG_LIMIT:
        raise CheckpointError(f"{where} is larger than {_CONFIG_LIMIT} bytes: not a config")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise CheckpointError(f"{where} is not valid JSON ({_short(exc)})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{where} holds a JSON {type(data).__name__}, not an object")
    return data


def load_classifier(
    path: str | Path, *, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, ClassifierConfig]:
    """Rebuild a classifier from a checkpoint directory; returns ``(model.eval(), config)``.

    Raises :class:`CheckpointError` naming the folder and the cause when the checkpoint
    cannot be used (see the module docstring); nothing is downloaded.
    """
    directory = Path(path)
    if directory.is_file():
        directory = directory.parent
    config = read_config(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise MissingCheckpointError(f"checkpoint {directory}: no {WEIGHTS_FILE}")
    if ":" in config.arch:  # timm's "hf-hub:..." / "local-dir:..." would fetch or read a config
        raise CheckpointError(
            f"checkpoint {directory}: {CONFIG_FILE} names architecture {config.arch!r}; a "
            "checkpoint names a timm architecture without a source prefix (loading needs no "
            "network and reads nothing outside the folder)"
        )
    try:
        model = build_classifier(config.arch, config.in_chans, config.num_classes)
    except (RuntimeError, ValueError) as exc:  # timm: "Unknown model (...)", a path-like name
        raise CheckpointError(
            f"checkpoint {directory}: {CONFIG_FILE} names architecture {config.arch!r}, "
            f"which timm cannot build ({_short(exc)})"
        ) from exc
    state = _read_state(weights)
    problem = _state_problem(model.state_dict(), state)
    if problem is None:
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            problem = _short(exc)
    if problem is not None:
        raise CheckpointError(
            f"checkpoint {directory}: weights do not fit {config.arch} with "
            f"{config.in_chans} channels and {config.num_classes} classes: {problem}"
        )
    return model.to(device).eval(), config


def _read_state(weights: Path) -> Mapping[str, Any]:
    """The state dict in ``model.pt`` (``weights_only``: tensors and plain containers only)."""
    import torch

    directory = weights.parent
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling foreign bytes raises any type at all
        # (measured: EOFError, KeyError, IndexError, RuntimeError, UnpicklingError, OSError)
        raise CheckpointError(
            f"checkpoint {directory}: {weights.name} cannot be read as a state dict "
            f"(truncated, corrupt or not saved by torch.save?): {_short(exc)}"
        ) from exc
    if not isinstance(state, Mapping):
        raise CheckpointError(
            f"checkpoint {directory}: {weights.name} holds a {type(state).__name__}, not a "
            "state dict (names -> tensors)"
        )
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"checkpoint {directory}: {weights.name} is not a state dict (names -> tensors): "
                f"its entry {key!r} holds a {type(value).__name__}"
            )
    return state


def _state_problem(expected: Mapping[str, Any], found: Mapping[str, Any]) -> str | None:
    """What differs between a model's state dict and a checkpoint's, in one line (or None).

    >>> import torch
    >>> want = {"w": torch.zeros(2, 3), "b": torch.zeros(2)}
    >>> _state_problem(want, {"w": torch.zeros(5, 3), "x": torch.zeros(1)})
    '1 missing (b), 1 unexpected (x), 1 of another shape (w: (5, 3) in the file, (2, 3) expected)'
    >>> _state_problem(want, dict(want)) is None
    True
    """
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [
        f"{k}: {tuple(found[k].shape)} in the file, {tuple(expected[k].shape)} expected"
        for k in expected
        if k in found and tuple(found[k].shape) != tuple(expected[k].shape)
    ]
    parts = [
        f"{len(items)} {what} ({_first(items)})"
        for what, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("of another shape", shapes),
        )
        if items
    ]
    return ", ".join(parts) or None


def _first(items: list[str], limit: int = 3) -> str:
    more = f", ... {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _short(exc: BaseException, limit: int = 300) -> str:
    """One line for ``exc``: terminal colour codes out, whitespace collapsed, at most
    ``limit`` characters (torch's messages run to many lines; ``--debug`` shows them whole).

    >>> error = RuntimeError("Weights only load failed.\\n\\x1b[1mdo this\\x1b[0m")
    >>> _short(error), _short(error, limit=20)
    ('RuntimeError: Weights only load failed. do this', 'RuntimeError: Wei...')
    """
    text = re.sub(r"\x1b\[[0-9;]*m", "", describe(exc))
    return text if len(text) <= limit else text[: limit - 3] + "..."

"""The seed solution's training and validation augmentations (albumentations 2.x).

Input: an ``HxWxC`` uint8 image whose channels are named by ``channels`` (3 = red, green,
blue; 4 = red, green, blue, yellow; or an explicit tuple of names). Output of a pipeline
called as ``pipeline(image=image)["image"]``: a ``CxSxS`` float32 ``torch.Tensor``,
normalised per channel as ``(x / 255 - mean) / std`` with the
:data:`hpa_kit.io.CHANNEL_MEAN` / :data:`~hpa_kit.io.CHANNEL_STD` values of those
channels unless ``mean`` / ``std`` are given (REFERENCE.md section 2; names and values are
checked by :func:`hpa_kit.io.check_channels` and :func:`~hpa_kit.io.check_normalisation`).

Train, in order: Resize(S) -> RandomScale(+-0.2, always) -> PadIfNeeded(S, constant 0) ->
RandomCrop(S) -> RandomBrightnessContrast(p=0.8) -> HorizontalFlip(0.5) -> VerticalFlip(0.5) ->
Rotate(+-90 deg, constant 0, p=0.5) -> Normalize -> tensor. Validation: Resize(S) ->
Normalize -> tensor (deterministic).

albumentations 2.x notes we rely on (REFERENCE.md section 6): padding takes ``fill=``
(``value=`` is ignored with a warning); mean/std are passed with one value per channel (a
3-value mean on a 4-channel image silently uses the first value for every channel); set
``NO_ALBUMENTATIONS_UPDATE=1`` so importing albumentations does not look for updates online.

Reproducibility: a ``Compose`` draws from its own generators, never from ``np.random`` or
``random``. ``Compose(seed=...)`` / ``set_random_seed`` give *every* transform its own
generator with the *same* seed, so in albumentations 2.0.8 the two flips always agree (only
identity or a 180 degree turn). :func:`seed_pipeline` instead hands all transforms one shared
pair of generators; the training loader calls it once per sample with a seed derived from
(run seed, epoch, sample index), so augmentations do not depend on worker count or order.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from typing import Any

import numpy as np

from hpa_kit.io import CHANNELS, check_channels, check_normalisation

__all__ = [
    "RGB",
    "RGBY",
    "channel_names",
    "seed_pipeline",
    "train_transform",
    "val_transform",
]

RGBY: tuple[str, ...] = CHANNELS
RGB: tuple[str, ...] = CHANNELS[:3]

ChannelsArg = int | Sequence[str]


def channel_names(channels: ChannelsArg) -> tuple[str, ...]:
    """Channel names for a count (3 -> RGB, 4 -> RGBY) or a sequence of names.

    >>> channel_names(4)
    ('red', 'green', 'blue', 'yellow')
    >>> channel_names(["green"])
    ('green',)
    """
    if isinstance(channels, int):
        if channels == 3:
            return RGB
        if channels == 4:
            return RGBY
        raise ValueError(f"channels must be 3 (RGB), 4 (RGBY) or a tuple of names, got {channels}")
    return check_channels(channels)


def _albumentations():
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    try:
        import albumentations as A
        from albumentations.pytorch import ToTensorV2
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "hpa_kit.augment needs albumentations>=2 and torch: pip install albumentations"
        ) from exc
    return A, ToTensorV2


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 8:
        raise ValueError(f"size must be an int >= 8, got {size!r}")
    return int(size)


def _normalise_to_tensor(channels: ChannelsArg, mean, std) -> list[Any]:
    """The last two steps of both pipelines: Normalize (checked values) -> tensor."""
    A, ToTensorV2 = _albumentations()
    mean_t, std_t = check_normalisation(channel_names(channels), mean, std)
    return [A.Normalize(mean=mean_t, std=std_t, max_pixel_value=255.0), ToTensorV2()]


def train_transform(
    size: int,
    *,
    channels: ChannelsArg = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Any:
    """The seed's training pipeline at ``size`` x ``size`` for ``channels``.

    >>> import numpy as np
    >>> out = train_transform(32, channels=4)(image=np.zeros((40, 50, 4), np.uint8))["image"]
    >>> tuple(out.shape), str(out.dtype)
    ((4, 32, 32), 'torch.float32')
    """
    import cv2

    size = _check_size(size)
    tail = _normalise_to_tensor(channels, mean, std)
    A, _ = _albumentations()
    return A.Compose(
        [
            A.Resize(size, size),
            A.RandomScale(scale_limit=0.2, p=1.0),
            A.PadIfNeeded(min_height=size, min_width=size, border_mode=cv2.BORDER_CONSTANT, fill=0),
            A.RandomCrop(size, size),
            A.RandomBrightnessContrast(p=0.8),
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.Rotate(border_mode=cv2.BORDER_CONSTANT, fill=0, p=0.5),
            *tail,
        ]
    )


def val_transform(
    size: int,
    *,
    channels: ChannelsArg = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Any:
    """The seed's validation pipeline: Resize -> Normalize -> tensor (no randomness).

    >>> import numpy as np
    >>> image = np.full((16, 16, 3), 255, np.uint8)
    >>> out = val_transform(8)(image=image)["image"]
    >>> round(float(out[0, 0, 0]), 4)  # (1 - 0.0807) / 0.1481
    6.2073
    """
    size = _check_size(size)
    tail = _normalise_to_tensor(channels, mean, std)
    A, _ = _albumentations()
    return A.Compose([A.Resize(size, size), *tail])


def seed_pipeline(pipeline: Any, seed: int) -> Any:
    """Make ``pipeline``'s next draws a function of ``seed`` alone; returns ``pipeline``.

    All transforms share one ``numpy.random.Generator`` and one ``random.Random`` (unlike
    ``Compose(seed=...)``, whose per-transform generators start identical). Pipelines without
    ``set_random_state`` (plain callables) are returned unchanged.
    """
    setter = getattr(pipeline, "set_random_state", None)
    if setter is not None:
        setter(np.random.default_rng(int(seed)), random.Random(int(seed)))
    return pipeline

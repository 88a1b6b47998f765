"""Test-time augmentation (TTA) for image-level classifiers, on batches already on the device.

Data contract: a batch is a float tensor ``(B, C, H, W)``, already normalised; ``H`` and ``W``
need not be equal. A *view* is one named transform of the batch; a *TTA set* is a tuple of
views. :func:`tta_predict` runs the model on every view and aggregates by the **mean of the
sigmoid probabilities** (classification outputs are invariant to the geometry, so views are
averaged, not inverted).

Views (``VIEWS``):

- ``identity``;
- ``hflip`` (mirror left-right, the column axis), ``vflip`` (mirror top-bottom, the row axis);
- ``rot90``, ``rot180``, ``rot270`` (counter-clockwise, as :func:`torch.rot90`), ``transpose``
  (rows <-> columns) and ``antitranspose`` (the other diagonal). The rotations by 90/270 and
  the transposes turn an ``H x W`` batch into ``W x H``; timm models end in global pooling, so
  they take it as it is;
- ``scale0.8`` and ``scale1.2``: the content is resized (bilinear; antialiased when shrinking)
  to ``round(H * f) x round(W * f)`` and then brought back to ``H x W`` **centred**: zero-padded
  when smaller (x0.8), centre-cropped when larger (x1.2). This is what training saw
  (``RandomScale`` -> ``PadIfNeeded(constant 0)`` -> ``RandomCrop``, REFERENCE.md section 2), so
  the model keeps its input size and its object scale matches training. "Zero" means a black
  *raw* pixel: after normalisation that is ``-mean / std`` per channel, which callers pass as
  ``fill`` (default 0.0).

Sets (``TTA_SETS``): ``"none"`` = identity; ``"seed"`` = identity, hflip, vflip, scale0.8,
scale1.2 (the seed solution's TTA); ``"d4"`` = the 8 flips/rotations of the square.

Inverses (``invert_view``) exist for the flips and rotations (they form the group D4; tests
check the round trip on non-square batches); the scale views have none, they are only
aggregated.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "INVERSE",
    "TTA_SETS",
    "VIEWS",
    "apply_view",
    "invert_view",
    "resolve_tta",
    "tta_predict",
]

TTA_SETS: dict[str, tuple[str, ...]] = {
    "none": ("identity",),
    "seed": ("identity", "hflip", "vflip", "scale0.8", "scale1.2"),
    "d4": ("identity", "rot90", "rot180", "rot270", "hflip", "vflip", "transpose", "antitranspose"),
}

# The inverse of each geometric view (the D4 group); scale views have none.
INVERSE: dict[str, str] = {
    "identity": "identity",
    "hflip": "hflip",
    "vflip": "vflip",
    "rot90": "rot270",
    "rot180": "rot180",
    "rot270": "rot90",
    "transpose": "transpose",
    "antitranspose": "antitranspose",
}
_SCALES: dict[str, float] = {"scale0.8": 0.8, "scale1.2": 1.2}
VIEWS: tuple[str, ...] = (*INVERSE, *_SCALES)


def resolve_tta(tta: str | Sequence[str]) -> tuple[str, ...]:
    """The views of a TTA set name (``"none"``, ``"seed"``, ``"d4"``) or of a sequence of views.

    >>> resolve_tta("seed")
    ('identity', 'hflip', 'vflip', 'scale0.8', 'scale1.2')
    >>> resolve_tta(["identity", "hflip"])
    ('identity', 'hflip')
    """
    if isinstance(tta, str):
        if tta not in TTA_SETS:
            raise ValueError(f"unknown TTA set {tta!r}; expected one of {sorted(TTA_SETS)}")
        return TTA_SETS[tta]
    views = tuple(tta)
    unknown = [v for v in views if v not in VIEWS]
    if not views or unknown:
        raise ValueError(f"TTA views must be a non-empty subset of {VIEWS}, got {views}")
    return views


def _fill_tensor(batch: torch.Tensor, fill: float | Sequence[float]) -> torch.Tensor:
    import torch

    values = torch.as_tensor(fill, dtype=batch.dtype, device=batch.device).reshape(-1)
    channels = batch.shape[1]
    if values.numel() == 1:
        values = values.expand(channels)
    elif values.numel() != channels:
        raise ValueError(
            f"fill needs 1 or {channels} values (one per channel), got {values.numel()}"
        )
    return values.reshape(1, channels, 1, 1)


def _fit_centred(
    batch: torch.Tensor, height: int, width: int, fill: float | Sequence[float]
) -> torch.Tensor:
    """Centre-crop and/or pad (with ``fill``) each spatial axis of ``batch`` to ``height x width``."""
    h, w = batch.shape[-2:]
    # Crop the axes that are too long.
    top = max(h - height, 0) // 2
    left = max(w - width, 0) // 2
    batch = batch[..., top : top + min(h, height), left : left + min(w, width)]
    h, w = batch.shape[-2:]
    if (h, w) == (height, width):
        return batch
    out = _fill_tensor(batch, fill).expand(batch.shape[0], -1, height, width).clone()
    top, left = (height - h) // 2, (width - w) // 2
    out[..., top : top + h, left : left + w] = batch
    return out


def _scale(batch: torch.Tensor, factor: float, fill: float | Sequence[float]) -> torch.Tensor:
    import torch.nn.functional as F

    h, w = batch.shape[-2:]
    size = (max(1, round(h * factor)), max(1, round(w * factor)))
    resized = F.interpolate(
        batch, size=size, mode="bilinear", align_corners=False, antialias=factor < 1
    )
    return _fit_centred(resized, h, w, fill)


def apply_view(
    batch: torch.Tensor, view: str, *, fill: float | Sequence[float] = 0.0
) -> torch.Tensor:
    """``batch`` (``B, C, H, W``) seen through ``view`` (see the module docstring).

    >>> import torch
    >>> x = torch.arange(6.0).reshape(1, 1, 2, 3)
    >>> apply_view(x, "hflip")[0, 0].tolist()
    [[2.0, 1.0, 0.0], [5.0, 4.0, 3.0]]
    >>> apply_view(x, "rot90")[0, 0].tolist()
    [[2.0, 5.0], [1.0, 4.0], [0.0, 3.0]]
    """
    import torch

    if batch.ndim != 4:
        raise ValueError(f"batch must be (B, C, H, W), got shape {tuple(batch.shape)}")
    if view == "identity":
        return batch
    if view == "hflip":
        return torch.flip(batch, dims=(-1,))
    if view == "vflip":
        return torch.flip(batch, dims=(-2,))
    if view == "rot90":
        return torch.rot90(batch, 1, dims=(-2, -1))
    if view == "rot180":
        return torch.rot90(batch, 2, dims=(-2, -1))
    if view == "rot270":
        return torch.rot90(batch, 3, dims=(-2, -1))
    if view == "transpose":
        return batch.transpose(-2, -1)
    if view == "antitranspose":
        return torch.flip(batch.transpose(-2, -1), dims=(-2, -1))
    if view in _SCALES:
        return _scale(batch, _SCALES[view], fill)
    raise ValueError(f"unknown TTA view {view!r}; expected one of {VIEWS}")


def invert_view(batch: torch.Tensor, view: str) -> torch.Tensor:
    """Undo a geometric view: ``invert_view(apply_view(x, v), v) == x`` for the D4 views.

    The scale views lose pixels and have no inverse (``ValueError``).
    """
    if view not in INVERSE:
        raise ValueError(f"view {view!r} has no inverse; invertible views: {tuple(INVERSE)}")
    return apply_view(batch, INVERSE[view])


def tta_predict(
    model: torch.nn.Module,
    batch: torch.Tensor,
    *,
    tta: str | Sequence[str] = "seed",
    fill: float | Sequence[float] = 0.0,
) -> torch.Tensor:
    """Mean sigmoid probability of ``model`` over the views of ``tta``: a ``(B, K)`` float32
    tensor on the batch's device.

    ``model`` returns logits ``(B, K)``; it is used as it is (call ``model.eval()`` first).
    ``fill`` is the value of a black raw pixel in the normalised batch (``-mean / std``, one
    value or one per channel), used by the scale views' padding.
    """
    import torch

    views = resolve_tta(tta)
    with torch.inference_mode():
        total = None
        for view in views:
            logits = model(apply_view(batch, view, fill=fill))
            if logits.ndim != 2 or logits.shape[0] != batch.shape[0]:
                raise ValueError(
                    f"model must return (B, K) logits, got shape {tuple(logits.shape)}"
                )
            probs = torch.sigmoid(logits.float())
            total = probs if total is None else total + probs
        return total / len(views)

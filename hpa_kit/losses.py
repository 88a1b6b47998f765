"""The seed solution's focal loss for multi-label logits (REFERENCE.md section 2).

For a logit ``x`` with ``p = sigmoid(x)`` and a target ``t`` (1 = class present)::

    positive (t = 1):      alpha  * (1 - p) ** gamma * -log(p)
    negative (t = 0):  (1 - alpha) *      p ** gamma * -log(1 - p)

and the loss is the mean over all elements (batch x classes). Soft targets mix the two
lines linearly (``t * positive + (1 - t) * negative``). ``alpha`` and ``gamma`` are floats or
one value per class (length ``C``, e.g. 19). Everything is computed from logits through
``logsigmoid`` (``log p = logsigmoid(x)``, ``log(1 - p) = logsigmoid(-x)``,
``p ** gamma = exp(gamma * logsigmoid(x))``), so large logits neither overflow nor give
``log(0)``.

``"bce"`` in the seed's results (and ``loss: bce`` in :class:`hpa_kit.train.TrainConfig`)
means this loss with ``alpha=0.5, gamma=0``, which is exactly **half** of
``torch.nn.functional.binary_cross_entropy_with_logits``:

>>> import torch
>>> x, t = torch.tensor([[2.0, -1.0]]), torch.tensor([[1.0, 0.0]])
>>> bce = torch.nn.functional.binary_cross_entropy_with_logits(x, t)
>>> bool(torch.isclose(focal_loss(x, t, alpha=0.5, gamma=0.0), 0.5 * bce))
True
"""

from __future__ import annotations

from collections.abc import Sequence

try:
    import torch
    import torch.nn.functional as F
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("hpa_kit.losses needs torch: pip install torch") from exc

__all__ = ["FocalLoss", "LOSS_NAMES", "focal_loss", "per_class"]

LOSS_NAMES: tuple[str, ...] = ("focal", "bce")
_REDUCTIONS = ("mean", "sum", "none")


def per_class(
    value: float, overrides: dict[int, float] | None = None, *, num_classes: int = 19
) -> list[float]:
    """``num_classes`` copies of ``value`` with some classes overridden.

    >>> per_class(0.5, {1: 0.25, 11: 0.25}, num_classes=12)[:3], per_class(0.5, {11: 0.25}, num_classes=12)[11]
    ([0.5, 0.25, 0.5], 0.25)
    """
    out = [float(value)] * num_classes
    for key, item in (overrides or {}).items():
        index = int(key)
        if not 0 <= index < num_classes:
            raise ValueError(
                f"per-class override for class {key!r} is out of range 0..{num_classes - 1}"
            )
        out[index] = float(item)
    return out


def _as_param(value, name: str, num_classes: int, like: torch.Tensor) -> torch.Tensor:
    tensor = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if tensor.ndim == 0:
        return tensor
    if tensor.ndim != 1 or tensor.shape[0] != num_classes:
        raise ValueError(
            f"{name} must be a float or have one value per class ({num_classes}), "
            f"got shape {tuple(tensor.shape)}"
        )
    return tensor


def focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    alpha: float | Sequence[float] | torch.Tensor = 0.5,
    gamma: float | Sequence[float] | torch.Tensor = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """The seed's focal loss of ``logits`` (N, C) against multi-hot ``targets`` (N, C).

    Computed in float32 even for half-precision logits.

    >>> round(float(focal_loss(torch.tensor([[0.0]]), torch.tensor([[1.0]]), alpha=0.25)), 6)
    0.173287
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if logits.shape != targets.shape:
        raise ValueError(
            f"logits and targets must have the same shape, got {tuple(logits.shape)} "
            f"and {tuple(targets.shape)}"
        )
    if logits.ndim != 2:
        raise ValueError(f"logits must be 2-D (batch, classes), got shape {tuple(logits.shape)}")
    x = logits.float()
    t = targets.to(x.dtype)
    num_classes = x.shape[1]
    a = _as_param(alpha, "alpha", num_classes, x)
    g = _as_param(gamma, "gamma", num_classes, x)
    log_p = F.logsigmoid(x)
    log_not_p = F.logsigmoid(-x)
    positive = a * torch.exp(g * log_not_p) * -log_p
    negative = (1.0 - a) * torch.exp(g * log_p) * -log_not_p
    loss = t * positive + (1.0 - t) * negative
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


class FocalLoss(torch.nn.Module):
    """``torch.nn.Module`` form of :func:`focal_loss`: ``FocalLoss(alpha=0.5, gamma=0.0)``.

    ``alpha`` / ``gamma``: float or one value per class (list or 1-D tensor); they move with
    the module (``.to(device)``) but are not saved in its ``state_dict``. ``reduction``:
    ``"mean"`` (default), ``"sum"`` or ``"none"``.

    >>> loss = FocalLoss(alpha=[0.5, 0.25], gamma=[0.0, 1.5])
    >>> tuple(loss(torch.zeros(4, 2), torch.ones(4, 2)).shape)
    ()
    """

    def __init__(
        self,
        alpha: float | Sequence[float] | torch.Tensor = 0.5,
        gamma: float | Sequence[float] | torch.Tensor = 0.0,
        *,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        alpha_t = torch.as_tensor(alpha, dtype=torch.float32).clone()
        gamma_t = torch.as_tensor(gamma, dtype=torch.float32).clone()
        for name, tensor in (("alpha", alpha_t), ("gamma", gamma_t)):
            if tensor.ndim > 1:
                raise ValueError(f"{name} must be a float or a 1-D per-class sequence")
            if not torch.all(torch.isfinite(tensor)):
                raise ValueError(f"{name} must be finite, got {tensor.tolist()}")
        if torch.any((alpha_t < 0) | (alpha_t > 1)):
            raise ValueError(f"alpha must lie in [0, 1], got {alpha_t.tolist()}")
        if torch.any(gamma_t < 0):
            raise ValueError(f"gamma must be >= 0, got {gamma_t.tolist()}")
        self.register_buffer("alpha", alpha_t, persistent=False)
        self.register_buffer("gamma", gamma_t, persistent=False)
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return focal_loss(
            logits, targets, alpha=self.alpha, gamma=self.gamma, reduction=self.reduction
        )

    def extra_repr(self) -> str:
        return f"alpha={self.alpha.tolist()}, gamma={self.gamma.tolist()}, reduction={self.reduction!r}"

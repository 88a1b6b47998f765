"""Multiple-instance pooling: per-cell logits of several bags -> one logit row per bag.

Data contract
-------------
- ``logits``: ``(cells, classes)`` float tensor, the cells of every bag of a batch stacked
  (no padding);
- ``bags``: ``(cells,)`` integer tensor, ``bags[i]`` = the bag (image) of cell ``i``, values
  ``0 .. n_bags - 1``, every bag holding at least one cell; cells of a bag need not be
  contiguous;
- result: ``(n_bags, classes)`` float32 tensor, row ``b`` pooled over the cells of bag ``b``,
  class by class.

Poolings (``method``):

- ``"max"``: the largest cell logit. The image is positive for a class when its most
  confident cell is; only that cell gets the gradient, so a bag's other cells are not pushed
  towards classes they lack. Ties share the gradient evenly.
- ``"lse"``: log-mean-exp with a ``temperature`` ``T``:
  ``T * log(mean_i exp(x_i / T))``. A smooth maximum: every cell gets gradient, in
  proportion to ``softmax(x / T)`` over the bag, so early in training (when the most
  confident cell is a guess) the signal is spread out; ``T -> 0`` gives ``max``, large ``T``
  the mean. With the *mean* inside the log a bag of identical cells pools to that cell's
  logit, so the pooled logit does not grow with the bag's size.
- ``"mean"``: the mean cell logit (the ``T -> infinity`` limit; every cell is pushed towards
  every class of its image, as crop training with image labels does).

A bag of one cell pools to that cell's logits for every method, with the same gradient:
bag training on bags of one is crop training.

Attention pooling (a learned weight per cell) is left out on purpose: its weights are not
part of a timm classifier, so a bag-trained checkpoint would no longer be a plain per-cell
classifier that :mod:`hpa_kit.predict` loads.

>>> import torch
>>> x = torch.tensor([[0.0, 2.0], [4.0, -2.0], [1.0, 1.0]])
>>> bags = torch.tensor([0, 0, 1])
>>> pool(x, bags, 2, method="max").tolist()
[[4.0, 2.0], [1.0, 1.0]]
>>> pool(x, bags, 2, method="mean").tolist()
[[2.0, 0.0], [1.0, 1.0]]
>>> [round(v, 4) for v in pool(x, bags, 2, method="lse", temperature=1.0)[0].tolist()]
[3.325, 1.325]
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["POOLINGS", "bag_index", "pool", "pool_lse", "pool_max", "pool_mean"]

POOLINGS: tuple[str, ...] = ("max", "lse", "mean")


def _torch():
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("hpa_kit.mil needs torch: pip install torch") from exc
    return torch


def bag_index(sizes) -> torch.Tensor:
    """The ``bags`` vector of bags of ``sizes`` cells stacked in order.

    >>> bag_index([2, 1, 3]).tolist()
    [0, 0, 1, 2, 2, 2]
    """
    torch = _torch()
    sizes = torch.as_tensor(sizes, dtype=torch.long)
    if sizes.ndim != 1 or bool((sizes < 1).any()):
        raise ValueError(f"bag sizes must be a 1-D sequence of ints >= 1, got {sizes.tolist()}")
    return torch.repeat_interleave(torch.arange(len(sizes)), sizes)


def _check(logits: torch.Tensor, bags: torch.Tensor, n_bags: int) -> torch.Tensor:
    """``bag sizes`` as a ``(n_bags, 1)`` float tensor, after checking the contract."""
    torch = _torch()
    if logits.ndim != 2:
        raise ValueError(f"logits must be (cells, classes), got shape {tuple(logits.shape)}")
    if bags.ndim != 1 or bags.shape[0] != logits.shape[0]:
        raise ValueError(
            f"bags must be one index per cell ({logits.shape[0]}), got shape {tuple(bags.shape)}"
        )
    if bags.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"bags must be an integer tensor, got {bags.dtype}")
    if int(n_bags) < 1 or (len(bags) and (int(bags.min()) < 0 or int(bags.max()) >= n_bags)):
        raise ValueError(f"bag indices must lie in 0..{int(n_bags) - 1}")
    sizes = torch.bincount(bags.long(), minlength=int(n_bags))
    if bool((sizes == 0).any()):
        empty = torch.nonzero(sizes == 0).flatten().tolist()
        raise ValueError(f"every bag needs at least one cell; empty bags: {empty[:10]}")
    return sizes.to(torch.float32, copy=False).unsqueeze(1).to(logits.device)


def _expand(bags: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    return bags.long().to(logits.device).unsqueeze(1).expand_as(logits)


def pool_max(logits: torch.Tensor, bags: torch.Tensor, n_bags: int) -> torch.Tensor:
    """Per-bag, per-class maximum of ``logits`` (see the module docstring)."""
    _check(logits, bags, n_bags)
    x = logits.float()
    out = x.new_full((int(n_bags), x.shape[1]), -math.inf)
    return out.scatter_reduce(0, _expand(bags, x), x, reduce="amax", include_self=True)


def pool_mean(logits: torch.Tensor, bags: torch.Tensor, n_bags: int) -> torch.Tensor:
    """Per-bag, per-class mean of ``logits``."""
    sizes = _check(logits, bags, n_bags)
    x = logits.float()
    total = x.new_zeros((int(n_bags), x.shape[1])).index_add(0, bags.long().to(x.device), x)
    return total / sizes


def pool_lse(
    logits: torch.Tensor, bags: torch.Tensor, n_bags: int, *, temperature: float = 1.0
) -> torch.Tensor:
    """Per-bag, per-class ``T * log(mean(exp(x / T)))`` (``T = temperature > 0``).

    Computed around the bag's maximum ``m`` (``m + T * log(mean(exp((x - m) / T)))``), so
    large logits never overflow; the result and its gradient are exact.
    """
    if not temperature > 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    sizes = _check(logits, bags, n_bags)
    x = logits.float()
    index = bags.long().to(x.device)
    peak = pool_max(x.detach(), bags, n_bags)
    shifted = ((x - peak[index]) / temperature).exp()
    total = x.new_zeros(peak.shape).index_add(0, index, shifted)
    return peak + temperature * (total / sizes).log()


def pool(
    logits: torch.Tensor,
    bags: torch.Tensor,
    n_bags: int,
    *,
    method: str = "lse",
    temperature: float = 1.0,
) -> torch.Tensor:
    """Pool per-cell ``logits`` into ``n_bags`` rows with ``method`` (:data:`POOLINGS`)."""
    if method == "max":
        return pool_max(logits, bags, n_bags)
    if method == "mean":
        return pool_mean(logits, bags, n_bags)
    if method == "lse":
        return pool_lse(logits, bags, n_bags, temperature=temperature)
    raise ValueError(f"pooling method must be one of {POOLINGS}, got {method!r}")

"""Tiny stand-ins for hpacellseg's networks (importable, so pickled whole modules load back).

Same contract as the real DPN U-Nets: N x 3 x H x W in (H, W multiples of 32), N x 3 x H x W
logits out. No tests here; used by test_segment_networks.py.
"""

from __future__ import annotations

import torch
from torch import nn


class TinyUNet(nn.Module):
    """Conv -> pool -> conv -> nn.Upsample -> conv: 3 channels in, 3 logits out, same H x W."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.down = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.mid = nn.Conv2d(4, 4, 3, padding=1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.head = nn.Conv2d(4, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.up(torch.relu(self.mid(self.down(x)))))


class ProbeNet(nn.Module):
    """Records its last input and returns fixed logits (0, 0, log 3): softmax (0.2, 0.2, 0.6)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []
        self.logits = nn.Parameter(torch.tensor([0.0, 0.0, float(torch.log(torch.tensor(3.0)))]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        n, _, h, w = x.shape
        return self.logits.view(1, 3, 1, 1).expand(n, 3, h, w)

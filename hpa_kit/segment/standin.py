"""A cost-faithful stand-in for hpacellseg's segmentation networks, with random weights.

hpacellseg's nuclei and cell networks are U-Nets on a DPN-92 encoder (REFERENCE.md section 3).
Their weights cannot be shipped with a benchmark, so :class:`StandInUNet` rebuilds the
architecture from its description, with random weights, to measure what the real networks
cost: the same layers and widths, hence the same parameter count and FLOPs (within a few
per cent of 139 M parameters and 579 GFLOPs per 3x512x512 forward; see :func:`standin_cost`).
Its maps say nothing about hpacellseg's accuracy.

Contract (hpacellseg's): input N x 3 x H x W float32, normalised with
``networks.CELL_MEAN`` / ``networks.CELL_STD``, H and W multiples of 32; output N x 3 x H x W
logits (softmax over channels: 0 unused, 1 touching borders, 2 foreground).

Architecture:

- encoder: timm's ``dpn92`` (``pretrained=False``) as a ``features_only`` model, five levels of
  widths :data:`WIDTHS` at strides 2, 4, 8, 16, 32 (checked when the model is built);
- decoder, from the deepest level up, for each shallower level ``l``: nearest upsampling x2,
  Conv3x3(width[l+1] -> width[l]) + ReLU, concatenation with the encoder's level ``l``,
  Conv3x3(2 width[l] -> width[l]) + ReLU; then nearest upsampling x2 to the input size,
  Conv3x3(64 -> 64) + ReLU and Conv3x3(64 -> 3);
- logits = a brightness prior + tanh(decoder output). The random network alone gives maps
  without cells, so the prior (channel 2: the smoothed brightness of the foreground channel
  above a threshold, steep; channel 1: -4; channel 0: 0) makes the maps show the image's bright
  blobs, for :func:`hpa_kit.segment.label_cells` to find. Its cost is negligible (a 5x5 mean of
  one channel); tanh keeps the random part within one logit.

Weight files: :func:`write_standin_weights` pickles both networks whole under hpacellseg's file
names (:data:`hpa_kit.segment.WEIGHT_FILES`), the nuclei network inside ``nn.DataParallel`` as
hpacellseg's file is, so that :func:`hpa_kit.segment.load_segmentation_models` and
``NetworkSegmenter.from_dir`` load them unchanged. Unpickling needs this module and timm at the
same module paths (a timm release that moves its feature-extraction classes cannot read files
written by another).

This module imports torch and timm; ``import hpa_kit.segment`` does not import it.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from hpa_kit.errors import UsageError
from hpa_kit.outputs import atomic_path
from hpa_kit.segment.networks import CELL_MEAN, CELL_STD, WEIGHT_FILES

__all__ = [
    "KINDS",
    "STRIDES",
    "WIDTHS",
    "Cost",
    "StandInUNet",
    "build_standin",
    "standin_cost",
    "write_standin_weights",
]

#: Encoder widths at strides :data:`STRIDES` (pytorch_zoo's DPNUnet on DPN-92).
WIDTHS = (64, 336, 704, 1552, 2688)
STRIDES = (2, 4, 8, 16, 32)
#: The two networks: which input channel the prior reads, and its threshold in grey levels.
KINDS = {"nuclei": ("blue", 25.0), "cell": ("brightest", 8.0)}


def _conv(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, padding=1)


class _UpBlock(nn.Module):
    """Upsample x2, Conv3x3(cin -> cout) + ReLU, concat the skip, Conv3x3(2 cout -> cout) + ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.reduce = _conv(cin, cout)
        self.merge = _conv(2 * cout, cout)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.act(self.reduce(self.up(x)))
        return self.act(self.merge(torch.cat([x, skip], dim=1)))


class _BrightnessPrior(nn.Module):
    """Logits from the input's brightness: (0, -4, steep(brightness - threshold))."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.channel, grey = KINDS[kind]
        self.threshold = grey / 255.0
        self.std = float(CELL_STD)
        self.register_buffer("mean", torch.tensor(CELL_MEAN, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = x.float() * self.std + self.mean  # back to [0, 1]
        if self.channel == "blue":
            values = values[:, 2:3]
        else:
            values = values.amax(dim=1, keepdim=True)
        values = nn.functional.avg_pool2d(values, 5, stride=1, padding=2, count_include_pad=False)
        foreground = (values - self.threshold) * (255.0 / 3.0)
        border = torch.full_like(foreground, -4.0)
        return torch.cat([torch.zeros_like(foreground), border, foreground], dim=1)


def _encoder() -> nn.Module:
    import timm

    encoder = timm.create_model("dpn92", pretrained=False, features_only=True)
    widths = tuple(encoder.feature_info.channels())
    strides = tuple(encoder.feature_info.reduction())
    if widths != WIDTHS or strides != STRIDES:
        raise RuntimeError(
            f"timm {timm.__version__}'s dpn92 features have widths {widths} at strides "
            f"{strides}; the stand-in needs {WIDTHS} at {STRIDES}"
        )
    return encoder


class StandInUNet(nn.Module):
    """A DPN-92 U-Net with hpacellseg's widths and random weights (see the module docstring).

    ``kind`` ("nuclei" or "cell") selects the brightness prior. Build it through
    :func:`build_standin` for seeded weights.
    """

    def __init__(self, kind: str) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
        self.kind = kind
        self.encoder = _encoder()
        self.decoder = nn.ModuleList(
            _UpBlock(WIDTHS[level + 1], WIDTHS[level]) for level in reversed(range(4))
        )
        self.head = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            _conv(WIDTHS[0], WIDTHS[0]),
            nn.ReLU(inplace=True),
            _conv(WIDTHS[0], 3),
        )
        self.prior = _BrightnessPrior(kind)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        h = features[-1]
        for block, skip in zip(self.decoder, reversed(features[:-1]), strict=True):
            h = block(h, skip)
        return self.prior(x) + torch.tanh(self.head(h).float())


def build_standin(kind: str, *, seed: int = 0, device: str | torch.device = "cpu") -> StandInUNet:
    """A :class:`StandInUNet` in eval mode, its weights drawn from ``seed``.

    torch's global random state is left as it was. ``device="meta"`` builds it without memory
    or initialisation (for counting parameters and FLOPs).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device(device):
            model = StandInUNet(kind)
    return model.eval()


class Cost(NamedTuple):
    """Parameters and FLOPs (multiply-adds x 2, as ``torch.utils.flop_counter`` counts) of one
    forward of a ``batch`` x 3 x ``rows`` x ``cols`` input."""

    params: int
    flops: int
    input_shape: tuple[int, int, int, int]


@functools.lru_cache(maxsize=1)
def _meta_model() -> StandInUNet:
    """One stand-in on the meta device (shapes only, no memory), shared by the cost counts."""
    return build_standin("nuclei", device="meta")


def standin_cost(*, rows: int = 512, cols: int = 512, batch: int = 1) -> Cost:
    """Parameters and forward FLOPs of one stand-in network, counted on the meta device.

    Fast (no weights, no arithmetic): a second or so. ``rows`` and ``cols`` must be multiples
    of 32, as the network's input must be.

    >>> cost = standin_cost(rows=64, cols=64)
    >>> round(cost.params / 1e6), round(cost.flops / 1e9, 1)  # 579 GFLOPs x (64 / 512)**2
    (139, 9.0)
    """
    from torch.utils.flop_counter import FlopCounterMode

    if rows % STRIDES[-1] or cols % STRIDES[-1] or rows <= 0 or cols <= 0 or batch < 1:
        raise ValueError(
            f"input {batch}x3x{rows}x{cols}: rows and cols must be positive multiples of "
            f"{STRIDES[-1]} and batch >= 1"
        )
    model = _meta_model()
    shape = (batch, 3, rows, cols)
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(torch.empty(shape, device="meta"))
    params = sum(p.numel() for p in model.parameters())
    return Cost(params=params, flops=int(counter.get_total_flops()), input_shape=shape)


def write_standin_weights(
    folder: str | os.PathLike, *, seed: int = 0, overwrite: bool = False
) -> tuple[Path, Path]:
    """Write random-weight stand-ins under hpacellseg's file names in ``folder``.

    The nuclei network (seed ``seed``) is pickled whole inside ``nn.DataParallel``, the cell
    network (seed ``seed + 1``) whole, as hpacellseg's ``dpn_unet_nuclei_v1.pth`` and
    ``dpn_unet_cell_3ch_v1.pth`` are; about 560 MB each, CPU tensors on any machine.
    ``folder`` is created if needed. Each file is written atomically
    (:func:`hpa_kit.outputs.atomic_path`): a failed or killed write leaves no partial weight
    file, and the bytes do not depend on the temporary name.

    Returns ``(nuclei_path, cell_path)``, ready for
    :func:`hpa_kit.segment.load_segmentation_models` (or pass ``folder`` to
    ``NetworkSegmenter.from_dir``).

    Raises:
        UsageError: ``folder`` is a file, or a weight file exists already and ``overwrite`` is
            False (nothing is written then).
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder} is not a directory")
    paths = (folder / WEIGHT_FILES["nuclei"], folder / WEIGHT_FILES["cell"])
    existing = [p.name for p in paths if p.exists()]
    if existing and not overwrite:
        raise UsageError(
            f"{folder} already holds {', '.join(existing)}; refusing to overwrite weight files "
            "(pass overwrite=True to replace them)"
        )
    folder.mkdir(parents=True, exist_ok=True)
    # DataParallel moves its module to cuda:0 on a machine with one GPU: back to the CPU, so
    # that the files hold CPU tensors wherever they were written.
    nuclei = nn.DataParallel(build_standin("nuclei", seed=seed)).cpu()
    _save(nuclei, paths[0])
    del nuclei
    _save(build_standin("cell", seed=seed + 1), paths[1])
    return paths


def _save(module: nn.Module, path: Path) -> None:
    """``torch.save`` through :func:`hpa_kit.outputs.atomic_path`, so that no truncated weight
    file is left (and a killed save's leftover goes at the next write into the folder)."""
    with atomic_path(path) as temp, open(temp, "wb") as handle:
        # Through a file object: torch names the archive inside after a path it is given, and
        # the temporary name would make two writes of the same weights differ in their bytes.
        torch.save(module, handle)

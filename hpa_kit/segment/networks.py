"""HPA-Cell-Segmentation's networks: loading the pickled weights and predicting maps.

torch is imported inside the functions; hpacellseg is never imported (its ``CellSegmentator``
objects are recognised by their attributes). Images are HxWx4 RGBY uint8; the maps come back
at ``scale`` of each image (:func:`hpa_kit.segment.reduced_shape`), HxWx3 uint8.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hpa_kit.segment._config import reduced_shape

__all__ = [
    "CELL_MEAN",
    "CELL_STD",
    "STRIDE",
    "WEIGHT_FILES",
    "load_segmentation_models",
    "network_inputs",
    "predict_maps",
]

#: hpacellseg's weight files: nuclei, 3-channel cell model, 2-channel cell model.
WEIGHT_FILES = {
    "nuclei": "dpn_unet_nuclei_v1.pth",
    "cell": "dpn_unet_cell_3ch_v1.pth",
    "cell_2ch": "dpn_unet_cell_v2.pth",
}
#: Input normalisation of both networks, on images scaled to [0, 1].
CELL_MEAN = (124 / 255, 117 / 255, 104 / 255)
CELL_STD = 1 / (0.0167 * 255)  # 0.234824..., the same for the three channels
#: Height and width of the network input must be multiples of this.
STRIDE = 32

_RED, _BLUE, _YELLOW = 0, 2, 3  # RGBY channel indices


def _torch():
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a dependency of hpa_kit
        raise ImportError("hpa_kit.segment.networks needs torch: pip install torch") from exc
    return torch


def _prepare(model: Any, device: str) -> Any:
    torch = _torch()
    while isinstance(model, torch.nn.DataParallel):
        model = model.module
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    for module in model.modules():
        if isinstance(module, torch.nn.Upsample):
            # Modules pickled before torch 1.11 lack this attribute; forward() then fails.
            module.recompute_scale_factor = None
    return model.to(device).eval()


def _load(path: str | os.PathLike, device: str) -> Any:
    torch = _torch()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"segmentation weights not found: {path}")
    try:
        # hpacellseg ships whole pickled nn.Modules, not state dicts: weights_only=False is
        # required (torch >= 2.6 defaults to True). Only load files you trust.
        return torch.load(path, map_location=device, weights_only=False)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == "pytorch_zoo":
            raise ImportError(
                f"unpickling {path} needs the 'pytorch_zoo' package that hpacellseg's networks "
                "are built from; install it from its GitHub repository "
                "(pip install 'git+https://github.com/haoxusci/pytorch_zoo@master#egg=pytorch_zoo', as "
                "hpacellseg's install.sh does; on Kaggle attach it as a dataset) - the "
                "PyPI package of that name is unrelated"
            ) from exc
        raise


def load_segmentation_models(
    nuclei_path: Any,
    cell_path: Any = None,
    device: str = "cpu",
) -> tuple[Any, Any]:
    """Load hpacellseg's nuclei and cell networks, ready for :func:`predict_maps`.

    Args:
        nuclei_path: path of ``dpn_unet_nuclei_v1.pth``, an ``nn.Module``, or an hpacellseg
            ``CellSegmentator`` (then ``cell_path`` must be None and both networks are taken
            from it).
        cell_path: path of ``dpn_unet_cell_3ch_v1.pth`` (or the 2-channel
            ``dpn_unet_cell_v2.pth``) or an ``nn.Module``.
        device: torch device string.

    Returns:
        ``(nuclei_model, cell_model)``: unwrapped from ``nn.DataParallel``, every
        ``nn.Upsample`` given ``recompute_scale_factor = None``, on ``device``, in eval mode.

    Raises:
        FileNotFoundError: a path does not exist.
        ImportError: the pickle needs ``pytorch_zoo`` and it is not installed.
    """
    torch = _torch()
    if cell_path is None:
        nuclei_path, cell_path = _from_segmentator(nuclei_path)
    models = []
    for item in (nuclei_path, cell_path):
        if isinstance(item, (str, os.PathLike)):
            item = _load(item, device)
        if not isinstance(item, torch.nn.Module):
            raise TypeError(f"expected a path or a torch.nn.Module, got {type(item).__name__}")
        models.append(_prepare(item, device))
    return models[0], models[1]


def _from_segmentator(segmentator: Any) -> tuple[Any, Any]:
    """The two networks of an hpacellseg ``CellSegmentator`` (duck-typed, never imported)."""
    for nuclei_attr, cell_attr in (("nuclei_model", "cell_model"), ("nuclei_network", "cell_network")):  # fmt: skip
        nuclei = getattr(segmentator, nuclei_attr, None)
        cell = getattr(segmentator, cell_attr, None)
        if nuclei is not None and cell is not None:
            return nuclei, cell
    raise TypeError(
        "give both nuclei_path and cell_path, or an hpacellseg CellSegmentator (with "
        f"nuclei_model and cell_model attributes); got {type(segmentator).__name__} alone"
    )


def network_inputs(
    image: np.ndarray, *, scale: float = 0.25, two_channel: bool = False
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Normalised network inputs for one RGBY image, padded to multiples of :data:`STRIDE`.

    The image is resized to :func:`reduced_shape` with OpenCV area interpolation, scaled to
    [0, 1], and reflect-padded at the bottom and right. Nuclei input: blue in all three
    channels. Cell input: (red, yellow, blue), or (red, zeros, blue) for the 2-channel model.
    Both are normalised with :data:`CELL_MEAN` / :data:`CELL_STD`.

    Returns ``(nuclei_input, cell_input, (rows, cols))``: two 3xHpxWp float32 arrays and the
    unpadded size at the reduced scale.
    """
    import cv2

    if image.ndim != 3 or image.shape[2] < 4 or image.dtype != np.uint8:
        raise ValueError(
            f"expected an HxWx4 RGBY uint8 image, got shape {image.shape} dtype {image.dtype}"
        )
    rows, cols = reduced_shape(image.shape[:2], scale)
    picked = image[..., [_RED, _YELLOW, _BLUE]]
    if (rows, cols) != image.shape[:2]:
        picked = cv2.resize(picked, (cols, rows), interpolation=cv2.INTER_AREA)
    pad_rows, pad_cols = -rows % STRIDE, -cols % STRIDE
    if pad_rows or pad_cols:
        picked = cv2.copyMakeBorder(picked, 0, pad_rows, 0, pad_cols, cv2.BORDER_REFLECT)
    values = picked.astype(np.float32) / 255.0
    red, yellow, blue = values[..., 0], values[..., 1], values[..., 2]
    if two_channel:
        yellow = np.zeros_like(yellow)
    mean = np.asarray(CELL_MEAN, np.float32)[:, None, None]
    nuclei = (np.stack([blue, blue, blue]) - mean) / np.float32(CELL_STD)
    cell = (np.stack([red, yellow, blue]) - mean) / np.float32(CELL_STD)
    return nuclei.astype(np.float32), cell.astype(np.float32), (rows, cols)


def _forward(model: Any, batch: np.ndarray, device: str) -> np.ndarray:
    """Softmax x 255 as uint8 (rounded), channel 0 zeroed: N x H x W x 3."""
    torch = _torch()
    tensor = torch.from_numpy(batch).to(device)
    with torch.inference_mode():
        if str(device).startswith("cuda"):
            with torch.autocast("cuda", dtype=torch.float16):
                logits = model(tensor)
        else:
            logits = model(tensor)
        if logits.shape[1] != 3 or logits.shape[2:] != tensor.shape[2:]:
            raise ValueError(
                f"segmentation network returned shape {tuple(logits.shape)} for input "
                f"{tuple(tensor.shape)}; expected N x 3 x H x W"
            )
        probs = torch.softmax(logits.float(), dim=1)
        maps = torch.round(probs * 255).clamp_(0, 255).to(torch.uint8)
        maps[:, 0] = 0
        return maps.permute(0, 2, 3, 1).cpu().numpy()


def predict_maps(
    images: Sequence[np.ndarray],
    nuclei_model: Any,
    cell_model: Any,
    *,
    scale: float = 0.25,
    batch_size: int = 4,
    device: str = "cpu",
    two_channel: bool = False,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Nuclei and cell maps for each RGBY image, at ``scale`` of its size.

    Images of different sizes are grouped by padded input size and batched within a group;
    results come back in input order. ``two_channel=True`` feeds the 2-channel cell model
    (``dpn_unet_cell_v2.pth``) zeros instead of yellow. Forward passes run under
    ``torch.inference_mode`` (float16 autocast on CUDA).

    Returns a list of ``(nuclei_maps, cell_maps)``, each HxWx3 uint8 at
    ``reduced_shape(image.shape, scale)`` (padding cropped).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    prepared = [network_inputs(image, scale=scale, two_channel=two_channel) for image in images]
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, (nuclei_input, _, _) in enumerate(prepared):
        groups.setdefault(nuclei_input.shape, []).append(index)
    results: list[Any] = [None] * len(prepared)
    for indices in groups.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            nuclei_batch = np.stack([prepared[i][0] for i in chunk])
            cell_batch = np.stack([prepared[i][1] for i in chunk])
            nuclei_maps = _forward(nuclei_model, nuclei_batch, device)
            cell_maps = _forward(cell_model, cell_batch, device)
            for k, i in enumerate(chunk):
                rows, cols = prepared[i][2]
                results[i] = (
                    np.ascontiguousarray(nuclei_maps[k, :rows, :cols]),
                    np.ascontiguousarray(cell_maps[k, :rows, :cols]),
                )
    return results

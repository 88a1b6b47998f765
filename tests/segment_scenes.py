"""Drawn scenes for the labelling tests: exact-size blobs and the maps that hold them."""

from __future__ import annotations

import numpy as np

FG = 200  # foreground probability 200/255 = 0.78: above every threshold


def rect(shape, top, left, height, width):
    mask = np.zeros(shape, bool)
    mask[top : top + height, left : left + width] = True
    return mask


def blob(shape, top, left, width, n):
    """Exactly ``n`` pixels, 4-connected: full rows of ``width`` then a partial row."""
    mask = np.zeros(shape, bool)
    rows, rest = divmod(n, width)
    mask[top : top + rows, left : left + width] = True
    mask[top + rows, left : left + rest] = True
    assert mask.sum() == n
    return mask


def scene_maps(shape, *, nucleus, cell, seed=None):
    """Maps with foreground FG on ``nucleus`` / ``cell``; nuclei border 255 on nucleus - seed."""
    nuclei_maps = np.zeros((*shape, 3), np.uint8)
    cell_maps = np.zeros((*shape, 3), np.uint8)
    nuclei_maps[..., 2][nucleus] = FG
    if seed is not None:
        nuclei_maps[..., 1][nucleus & ~seed] = 255
    cell_maps[..., 2][cell] = FG
    return nuclei_maps, cell_maps

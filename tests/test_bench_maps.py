"""Tests for the map kinds of benchmarks/bench_segment.py: built deterministically, and each
kind changes the clean maps the way its name says."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest

_BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(_BENCHMARKS))
        yield importlib.import_module("bench_segment")


@pytest.fixture(scope="module")
def scene():
    """Three cells on 256 x 256: two that touch once grown (left), one alone (right)."""
    mask = np.zeros((256, 256), np.int32)
    rows, cols = np.ogrid[:256, :256]
    for label, (r, c) in enumerate(((70, 60), (144, 60), (110, 190)), start=1):
        mask[(rows - r) ** 2 + (cols - c) ** 2 < 36**2] = label
    image = np.zeros((256, 256, 4), np.uint8)
    image[..., 0][mask > 0] = 80
    for r, c in ((70, 60), (144, 60), (110, 190)):
        image[..., 2][(rows - r) ** 2 + (cols - c) ** 2 < 14**2] = 220
    return image, mask


def test_contacts_are_both_pixels_of_each_touching_pair(bench):
    grown = np.array(
        [[1, 1, 2],
         [1, 0, 2],
         [3, 3, 2]], np.int32)  # fmt: skip
    rows, cols, keys = bench._contacts(grown)
    pixels = sorted(zip(rows.tolist(), cols.tolist(), keys.tolist(), strict=True))
    # pairs (key = min * 4 + max): 1-2 at (0,1)|(0,2), 1-3 at (1,0)|(2,0), 2-3 at (2,1)|(2,2);
    # the background (1,1) touches nothing
    assert pixels == [(0, 1, 6), (0, 2, 6), (1, 0, 7), (2, 0, 7), (2, 1, 11), (2, 2, 11)]


def test_kinds_are_deterministic_and_differ_as_named(bench, scene):
    image, mask = scene
    layers = bench.build_layers(image, mask, seed=3)
    maps = {kind: bench.kind_maps(layers, mask, kind) for kind in bench.KINDS}
    for kind, (nuclei, cells) in maps.items():
        again = bench.kind_maps(bench.build_layers(image, mask, seed=3), mask, kind)
        assert np.array_equal(nuclei, again[0]) and np.array_equal(cells, again[1]), kind
        assert nuclei.shape == cells.shape == (256, 256, 3) and cells.dtype == np.uint8
        assert not nuclei[..., :2].any() and not cells[..., 0].any()  # unused channels are 0
    clean_nuclei, clean = maps["clean"]
    assert clean[..., 1].max() > 150  # a border where cells 1 and 2 meet ...
    assert not clean[:, 130:, 1].any()  # ... and none around the lone cell
    weak = maps["weak-borders"][1]
    assert weak[..., 1].max() <= 0.35 * 200 + 1  # weak (<= x 0.35) or missing
    assert weak[..., 2].sum() >= clean[..., 2].sum()  # the foreground dips less
    dim_nuclei, dim = maps["uneven"]
    assert (dim[..., 2] <= clean[..., 2]).all() and dim[..., 2].sum() < 0.9 * clean[..., 2].sum()
    assert (dim_nuclei[..., 2] <= clean_nuclei[..., 2]).all()
    noisy = maps["noisy"][1].astype(int)
    assert 5 < np.abs(noisy - clean).mean() < 30  # sd 25 noise, clipped at 0 and 255
    other = bench.kind_maps(bench.build_layers(image, mask, seed=4), mask, "noisy")[1]
    assert not np.array_equal(other, maps["noisy"][1])  # the seed drives the noise
    with pytest.raises(ValueError, match="kind"):
        bench.kind_maps(layers, mask, "blurry")

"""hpa_kit.segment.classical_maps: format, drawn scenes, real samples, synthetic images."""

from __future__ import annotations

import numpy as np
import pytest

from hpa_kit.segment import (
    ClassicalSegmenter,
    SegConfig,
    classical_maps,
    label_cells,
    match_labels,
    upsample_labels,
)


def _disk(shape, center, radius):
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - center[0]) ** 2 + (cols - center[1]) ** 2 <= radius**2


def _drawn_image(shape=(512, 640), seed=0):
    """Three cells (radius 90-100 px bodies in red and yellow, 36 px nuclei in blue), two of
    them touching, on a dark noisy background. Returns the image and the cell truth."""
    rng = np.random.default_rng(seed)
    cells = [((150, 150), 100), ((150, 340), 95), ((380, 450), 90)]
    truth = np.zeros(shape, np.int32)
    image = rng.integers(0, 6, (*shape, 4)).astype(np.float64)
    centers = np.array([c for c, _ in cells])
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    nearest = np.argmin([np.hypot(rows - r, cols - c) for r, c in centers], axis=0)
    for k, (center, radius) in enumerate(cells, start=1):
        body = _disk(shape, center, radius) & (nearest == k - 1)
        truth[body] = k
        texture = rng.uniform(40, 90, shape)
        image[..., 0][body] += texture[body]
        image[..., 3][body] += 0.8 * texture[body]
        image[..., 2][_disk(shape, center, 36)] += 160
    return np.clip(image, 0, 255).astype(np.uint8), truth


def test_maps_format():
    image, _ = _drawn_image()
    nuclei_maps, cell_maps = classical_maps(image, scale=0.25)
    assert nuclei_maps.shape == cell_maps.shape == (128, 160, 3)
    assert nuclei_maps.dtype == cell_maps.dtype == np.uint8
    assert (nuclei_maps[..., 0] == 0).all() and (cell_maps[..., 0] == 0).all()
    assert nuclei_maps[150 // 4, 150 // 4, 2] > 200 and nuclei_maps[5, 5, 2] < 20
    assert cell_maps[100 // 4, 100 // 4, 2] > 200 and cell_maps[5, 5, 2] < 20
    # the two touching cells are parted by a border line (128) with a foreground gap
    line = cell_maps[150 // 4, 50:90, 1]
    assert set(np.unique(cell_maps[..., 1])) <= {0, 128} and (line == 128).any()
    assert (cell_maps[150 // 4, 50:90, 2][line == 128] == 0).all()
    half, _ = classical_maps(image, scale=0.5)
    assert half.shape == (256, 320, 3)


def test_drawn_cells_are_found():
    image, truth = _drawn_image()
    ((nuclei, cells),) = ClassicalSegmenter(scale=0.25).segment([image])
    assert cells.shape == truth.shape and cells.max() == 3
    m = match_labels(truth, cells)
    assert m.tp == 3 and m.mean_iou > 0.8  # 0.83: outlines a few px outside the drawn edge
    for center in [(150, 150), (150, 340), (380, 450)]:
        assert nuclei[center] == cells[center] > 0


def test_blank_and_bad_images():
    blank = np.zeros((200, 300, 4), np.uint8)
    nuclei_maps, cell_maps = classical_maps(blank)
    assert nuclei_maps.shape == (50, 75, 3)
    nuclei, cells = label_cells(nuclei_maps, cell_maps, SegConfig(scale=0.25))
    assert cells.max() == nuclei.max() == 0
    with pytest.raises(ValueError, match="RGBY"):
        classical_maps(np.zeros((20, 20, 3), np.uint8))
    with pytest.raises(ValueError, match="RGBY"):
        classical_maps(np.zeros((20, 20, 4), np.float32))


def test_against_hpacellseg_masks_of_the_real_samples(samples_dir, sample_ids):
    """Cell F1 at IoU >= 0.5 over the four real images, against hpacellseg's own masks."""
    from hpa_kit.io import read_image, read_label_image

    tp = n_true = n_pred = 0
    for image_id in sample_ids:
        image = read_image(samples_dir / "images", image_id)
        truth = read_label_image(samples_dir / "masks" / f"{image_id}_predictedmask.png")
        ((_, cells),) = ClassicalSegmenter(scale=0.25).segment([image])
        m = match_labels(truth, cells)
        tp, n_true, n_pred = tp + m.tp, n_true + m.n_true, n_pred + m.n_pred
        assert m.f1 >= 0.8 and m.mean_iou >= 0.75, (image_id, m)
    assert 2 * tp / (n_true + n_pred) >= 0.95  # measured 0.98 (57 of 57 predicted matched)


def test_synthetic_images():
    """The synthetic images (hpa_kit.synth) at the real 2048 px scale."""
    synth = pytest.importorskip("hpa_kit.synth")
    s = synth.generate_image(size=2048, seed=0)
    nuclei_maps, cell_maps = classical_maps(s.image, scale=0.25)
    _, cells = label_cells(nuclei_maps, cell_maps, SegConfig(scale=0.25))
    m = match_labels(s.cell_labels, upsample_labels(cells, s.image.shape[:2]))
    assert m.f1 >= 0.8 and m.mean_iou >= 0.8, m  # measured F1 0.86, mean IoU 0.86


@pytest.mark.parametrize("shape", [(1728, 1728), (3072, 3072), (1730, 2049)])
def test_competition_sizes_round_trip(shape):
    """Maps at a quarter of any size (432, 768, 433 x 512 px), labels back at the exact size."""
    center = (shape[0] // 2, shape[1] // 2)
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    distance = np.hypot(rows - center[0], cols - center[1])
    image = np.full((*shape, 4), 2, np.uint8)
    image[..., 0][distance < 300] = 60
    image[..., 2][distance < 110] = 200
    ((nuclei, cells),) = ClassicalSegmenter(scale=0.25).segment([image])
    assert cells.shape == nuclei.shape == shape and cells.dtype == np.int32
    assert cells.max() == 1 and nuclei[center] == cells[center] == 1
    assert (
        abs(int((cells == 1).sum()) - int((distance < 300).sum())) < 0.15 * (distance < 300).sum()
    )

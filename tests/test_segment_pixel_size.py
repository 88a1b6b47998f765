"""hpa_kit.segment's ``pixel_size``: sizes of shrunk HPA images (full-resolution px per pixel)."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from segment_scenes import blob, rect, scene_maps

from hpa_kit.cli import main
from hpa_kit.io import read_label_image, resize_area, write_channels
from hpa_kit.segment import (
    ClassicalConfig,
    ClassicalSegmenter,
    NetworkSegmenter,
    SegConfig,
    classical_maps,
    label_cells,
    match_labels,
)
from hpa_kit.synth import generate_image, write_dataset

HALF = SegConfig(scale=1.0, pixel_size=2.0)  # maps at the size of a 1024 px image of 2048 px


def _cell_image(shape, center, body, nucleus):
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    distance = np.hypot(rows - center[0], cols - center[1])
    image = np.full((*shape, 4), 3, np.uint8)
    image[..., 0][distance < body] = 70
    image[..., 3][distance < body] = 60
    image[..., 2][distance < nucleus] = 180
    return image


# --- sizes ------------------------------------------------------------------------------------


def test_sizes_scale_by_scale_over_pixel_size():
    # 5500 / 2**2 = 1375 exactly (not 1376); 500 / 4 = 125; 8 / 4 = 2; radius 6 / 2 = 3
    assert HALF.sizes() == SegConfig(scale=0.5).sizes()
    sizes = HALF.sizes()
    assert (sizes.min_seed_area, sizes.max_hole_area, sizes.min_mask_area) == (125, 250, 2)
    assert (sizes.min_nucleus_area, sizes.min_cell_area, sizes.closing_radius) == (625, 1375, 3)
    assert HALF.effective_scale == 0.5
    # maps at 0.5 of a 1024 px cache = maps at 0.25 of the 2048 px image
    assert SegConfig(scale=0.5, pixel_size=2.0).sizes() == SegConfig(scale=0.25).sizes()
    # a 384 px synthetic image (2048 / 384 px per pixel), maps at its size: 5500 / 28.44 up
    synth = SegConfig(scale=1.0, pixel_size=2048 / 384).sizes()
    assert (synth.min_cell_area, synth.min_nucleus_area, synth.closing_radius) == (194, 88, 2)
    assert SegConfig(pixel_size=1.0) == SegConfig() and SegConfig().pixel_size == 1.0
    assert HALF.at_scale(0.25).pixel_size == 2.0
    assert HALF.sizes(0.5) == SegConfig(scale=0.25).sizes()


def test_rim_cut_follows_the_effective_scale():
    # kept while one map pixel stands for at most 2 full-resolution pixels, dropped beyond
    assert SegConfig(scale=1.0, pixel_size=2.0).sizes().rim_cut == 1
    assert SegConfig(scale=1.0, pixel_size=2.5).sizes().rim_cut == 0
    assert SegConfig(scale=0.5, pixel_size=2.0).sizes().rim_cut == 0
    assert SegConfig(scale=1.0, pixel_size=0.5).sizes().rim_cut == 1
    # the closing radius never drops to 0
    assert SegConfig(scale=1.0, pixel_size=100.0).sizes().closing_radius == 1


@pytest.mark.parametrize("pixel_size", [0.0, -1.0, math.nan, math.inf, True, "2"])
def test_bad_pixel_size_is_refused(pixel_size):
    with pytest.raises(ValueError, match="pixel_size"):
        SegConfig(pixel_size=pixel_size)
    with pytest.raises(ValueError, match="pixel_size"):
        ClassicalSegmenter(0.5, pixel_size=pixel_size)
    image = np.zeros((16, 16, 4), np.uint8)
    with pytest.raises(ValueError, match="pixel_size"):
        classical_maps(image, scale=0.5, pixel_size=pixel_size)


def test_segmenter_config_must_match_pixel_size():
    with pytest.raises(ValueError, match="pixel_size"):
        ClassicalSegmenter(1.0, config=HALF)  # the segmenter says 1.0
    assert ClassicalSegmenter(1.0, config=HALF, pixel_size=2.0).config is HALF
    with pytest.raises(ValueError, match="pixel_size"):
        NetworkSegmenter(None, None, scale=1.0, config=HALF)
    network = NetworkSegmenter(None, None, scale=0.5, pixel_size=2.0)
    assert network.config == SegConfig(scale=0.5, pixel_size=2.0)
    assert repr(network).endswith("two_channel=False, pixel_size=2.0)")


# --- label_cells at pixel_size 2: each area at its boundary -------------------------------------


@pytest.mark.parametrize(("n", "kept"), [(625, True), (624, False)])  # 2500 / 2**2
def test_nucleus_area_boundary_at_pixel_size_2(n, kept):
    shape = (96, 96)
    cell = rect(shape, 8, 8, 80, 80)
    nucleus = blob(shape, 24, 24, 26, n)
    maps = scene_maps(shape, nucleus=nucleus, cell=cell)
    nuclei, cells = label_cells(*maps, HALF)
    assert cells.max() == (1 if kept else 0)
    assert (nuclei == 1).sum() == (n if kept else 0)
    # the same object in a full-resolution image is far too small
    assert label_cells(*maps, SegConfig(scale=1.0))[1].max() == 0


@pytest.mark.parametrize(("n", "kept"), [(125, True), (124, False)])  # 500 / 2**2
def test_seed_area_boundary_at_pixel_size_2(n, kept):
    shape = (96, 96)
    cell = rect(shape, 8, 8, 80, 80)
    nucleus = rect(shape, 24, 24, 40, 40)
    seed = blob(shape, 32, 28, 12, n)
    nuclei, cells = label_cells(*scene_maps(shape, nucleus=nucleus, cell=cell, seed=seed), HALF)
    assert cells.max() == (1 if kept else 0)
    if kept:
        assert (nuclei == 1).sum() == nucleus.sum()


# --- the classical segmenter --------------------------------------------------------------------


def test_classical_segmenter_finds_synthetic_cells_only_with_pixel_size():
    synth = generate_image(size=384, seed=3)
    _, cells = ClassicalSegmenter(0.5, pixel_size=2048 / 384).segment([synth.image])[0]
    match = match_labels(synth.cell_labels, cells, threshold=0.6)
    assert cells.dtype == np.int32 and cells.shape == synth.cell_labels.shape
    assert match.f1 > 0.65 and match.tp >= 15, match
    # without it the sizes are those of a 2048 px image: no synthetic cell is big enough
    _, default_cells = ClassicalSegmenter(0.5).segment([synth.image])[0]
    assert match_labels(synth.cell_labels, default_cells, threshold=0.6).tp == 0


def test_half_size_image_with_pixel_size_2_segments_like_the_full_image():
    full = _cell_image((512, 512), (256, 256), 150, 50)
    half = resize_area(full, 256)
    _, cells_full = ClassicalSegmenter(0.25).segment([full])[0]
    _, cells_half = ClassicalSegmenter(0.5, pixel_size=2.0).segment([half])[0]
    assert cells_half.shape == (256, 256) and cells_full.max() == cells_half.max() == 1
    match = match_labels(cells_full[::2, ::2], cells_half, threshold=0.9)
    assert match.f1 == 1.0 and match.mean_iou > 0.97, match


def test_classical_segmenter_pickles_with_its_configs():
    seg = ClassicalSegmenter(0.5, pixel_size=4.0, classical=ClassicalConfig(smooth_sigma=6.0))
    back = pickle.loads(pickle.dumps(seg))
    assert back.config == seg.config == SegConfig(scale=0.5, pixel_size=4.0)
    assert back.pixel_size == 4.0 and back.classical == ClassicalConfig(smooth_sigma=6.0)
    assert repr(back) == "ClassicalSegmenter(scale=0.5, pixel_size=4.0)"
    assert repr(ClassicalSegmenter()) == "ClassicalSegmenter(scale=0.25)"
    image = _cell_image((128, 128), (64, 64), 40, 15)
    for (n1, c1), (n2, c2) in zip(seg.segment([image]), back.segment([image]), strict=True):
        np.testing.assert_array_equal(c1, c2)
        np.testing.assert_array_equal(n1, n2)
    with pytest.raises(TypeError, match="ClassicalConfig"):
        ClassicalSegmenter(0.5, classical=SegConfig(scale=0.5))


# --- CLI and predictor ----------------------------------------------------------------------------


def test_segment_command_pixel_size(tmp_path, capsys):
    images = tmp_path / "images"
    # nucleus radius 18: ~1000 px, under 2500 (2048 px image) but over 625 (pixel_size 2)
    write_channels(images, "a", _cell_image((128, 160), (64, 80), 45, 18))
    base = ["segment", str(images), "--scale", "0.5"]
    assert main([*base, "--out", str(tmp_path / "plain")]) == 0
    assert read_label_image(tmp_path / "plain" / "a_cells.png").max() == 0
    assert main([*base, "--out", str(tmp_path / "px2"), "--pixel-size", "2"]) == 0
    cells = read_label_image(tmp_path / "px2" / "a_cells.png")
    assert cells.max() == 1 and cells[64, 80] == 1
    assert "pixel_size=2.0" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "bad"), "--pixel-size", "0"]) == 2
    assert "--pixel-size" in capsys.readouterr().err


def test_predict_command_passes_pixel_size(tmp_path, monkeypatch):
    import hpa_kit.predict as predict

    seen = {}

    class _Report:
        complete = True

        def summary(self):
            return "ok"

    def fake_predict_folder(images, sample, classifiers, *, segmenter, **kwargs):
        seen["segmenter"] = segmenter
        return _Report()

    monkeypatch.setattr(predict, "load_ensemble", lambda paths, device: [])
    monkeypatch.setattr(predict, "predict_folder", fake_predict_folder)
    sample = tmp_path / "s.csv"  # predict checks the sample and the images before loading
    sample.write_text("ID,ImageWidth,ImageHeight,PredictionString\na,8,8,\n")
    (tmp_path / "a_red.png").touch()
    args = ["predict", "--images", str(tmp_path), "--sample", str(sample), "--models", "m"]
    args += ["--out", str(tmp_path / "sub.csv"), "--device", "cpu", "--seg-scale", "0.5"]
    assert main([*args, "--pixel-size", "2"]) == 0
    assert seen["segmenter"].config == SegConfig(scale=0.5, pixel_size=2.0)
    assert main(args) == 0
    assert seen["segmenter"].pixel_size == 1.0
    assert main([*args, "--pixel-size", "-1"]) == 2


def test_resume_fingerprint_records_pixel_size():
    from hpa_kit.predict import PredictOptions, _fingerprint

    options = PredictOptions()
    one = _fingerprint([], ClassicalSegmenter(0.5), options)
    two = _fingerprint([], ClassicalSegmenter(0.5, pixel_size=2.0), options)
    assert one != two
    assert one == _fingerprint([], ClassicalSegmenter(0.5), options)


# --- synth progress switch ---------------------------------------------------------------------


@pytest.mark.parametrize("progress", [True, False])
def test_write_dataset_progress_switch(tmp_path, capsys, monkeypatch, progress):
    monkeypatch.setenv("HPA_KIT_PROGRESS", "1")  # capsys is not a terminal
    write_dataset(tmp_path / "d", n=1, size=96, seed=0, progress=progress)
    assert ("synth" in capsys.readouterr().err) is progress

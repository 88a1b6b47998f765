"""hpa_kit.segment networks: loading pickled modules, predict_maps, NetworkSegmenter."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_segment_helpers import ProbeNet, TinyUNet  # noqa: E402

from hpa_kit.segment import (  # noqa: E402
    WEIGHT_FILES,
    NetworkSegmenter,
    SegConfig,
    load_segmentation_models,
    networks,  # noqa: E402
    predict_maps,
    segment,
)

SMALL = SegConfig(scale=0.25, min_seed_area=0, max_hole_area=0, min_mask_area=0,
                  min_nucleus_area=0, min_cell_area=0)  # fmt: skip


def _image(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (*shape, 4), dtype=np.uint8)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture()
def weights_dir(tmp_path):
    """hpacellseg-style files: whole pickled modules, one wrapped in DataParallel, one whose
    nn.Upsample lacks ``recompute_scale_factor`` (as modules pickled before torch 1.11 do)."""
    nuclei = TinyUNet(seed=1)
    del nuclei.up.recompute_scale_factor
    torch.save(torch.nn.DataParallel(nuclei), tmp_path / WEIGHT_FILES["nuclei"])
    torch.save(TinyUNet(seed=2), tmp_path / WEIGHT_FILES["cell"])
    return tmp_path


def test_loader_unwraps_fixes_upsample_and_evals(weights_dir):
    raw = torch.load(weights_dir / WEIGHT_FILES["nuclei"], weights_only=False)
    assert isinstance(raw, torch.nn.DataParallel)
    # torch restores the missing attribute as True (older versions raised AttributeError in
    # forward); hpacellseg's networks need None
    assert raw.module.up.recompute_scale_factor is not None
    nuclei, cell = load_segmentation_models(
        weights_dir / WEIGHT_FILES["nuclei"], str(weights_dir / WEIGHT_FILES["cell"])
    )
    assert isinstance(nuclei, TinyUNet) and isinstance(cell, TinyUNet)
    assert not nuclei.training and not cell.training
    assert nuclei.up.recompute_scale_factor is None
    assert nuclei(torch.zeros(1, 3, 32, 32)).shape == (1, 3, 32, 32)
    expected = TinyUNet(seed=1).eval()
    x = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(nuclei(x), expected(x))


def test_loader_accepts_modules_and_a_segmentator_object():
    class FakeSegmentator:  # hpacellseg's CellSegmentator keeps the two networks so
        def __init__(self):
            self.nuclei_model = torch.nn.DataParallel(TinyUNet(1))
            self.cell_model = TinyUNet(2).train()

    nuclei, cell = load_segmentation_models(FakeSegmentator())
    assert isinstance(nuclei, TinyUNet) and not cell.training
    nuclei, cell = load_segmentation_models(TinyUNet(1), TinyUNet(2))
    assert isinstance(cell, TinyUNet)
    with pytest.raises(TypeError, match="CellSegmentator"):
        load_segmentation_models(object())
    with pytest.raises(TypeError, match="nn.Module"):
        load_segmentation_models(TinyUNet(1), 42)


def test_loader_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_segmentation_models(tmp_path / "nope.pth", tmp_path / "nope2.pth")


def test_loader_names_pytorch_zoo_when_it_is_missing(tmp_path, monkeypatch):
    package = tmp_path / "pkgs" / "pytorch_zoo"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "unet.py").write_text(
        textwrap.dedent(
            """
            import torch
            class DPNUnet(torch.nn.Module):
                def __init__(self):
                    super().__init__()
                    self.conv = torch.nn.Conv2d(3, 3, 1)
                def forward(self, x):
                    return self.conv(x)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    from pytorch_zoo.unet import DPNUnet

    torch.save(DPNUnet(), tmp_path / "nuclei.pth")
    monkeypatch.delitem(sys.modules, "pytorch_zoo.unet")
    monkeypatch.delitem(sys.modules, "pytorch_zoo")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path / "pkgs")])
    with pytest.raises(ImportError, match="pytorch_zoo") as info:
        load_segmentation_models(tmp_path / "nuclei.pth", TinyUNet())
    assert "PyPI package of that name is unrelated" in str(info.value)


def test_network_inputs_channels_normalisation_and_padding():
    image = np.zeros((80, 100, 4), np.uint8)
    image[..., 0], image[..., 1], image[..., 2], image[..., 3] = 10, 20, 30, 40  # R G B Y
    image[0, 0, 2] = 250  # a bright corner pixel, to see the reflect padding
    nuclei, cell, size = networks.network_inputs(image, scale=1.0)
    assert size == (80, 100) and nuclei.shape == cell.shape == (3, 96, 128)
    std = networks.CELL_STD
    mean = networks.CELL_MEAN
    for c in range(3):  # nuclei: blue in all three channels, each with its channel's mean
        assert nuclei[c, 5, 5] == pytest.approx((30 / 255 - mean[c]) / std, rel=1e-6)
    for c, value in enumerate((10, 40, 30)):  # cell: red, yellow, blue
        assert cell[c, 5, 5] == pytest.approx((value / 255 - mean[c]) / std, rel=1e-6)
    # reflect padding (edge pixel repeated): rows 80..95 mirror rows 79..64
    np.testing.assert_array_equal(nuclei[:, 80:96, :100], nuclei[:, 79:63:-1, :100])
    _, two, _ = networks.network_inputs(image, scale=1.0, two_channel=True)
    assert two[1, 5, 5] == pytest.approx((0 - mean[1]) / std, rel=1e-6)
    _, _, size = networks.network_inputs(np.zeros((1728, 1000, 4), np.uint8), scale=0.25)
    assert size == (432, 250)
    with pytest.raises(ValueError, match="RGBY"):
        networks.network_inputs(np.zeros((8, 8, 3), np.uint8))


def test_predict_maps_format_and_inputs():
    nuclei, cell = ProbeNet().eval(), ProbeNet().eval()
    image = _image((72, 40))
    ((nuc_maps, cell_maps),) = predict_maps([image], nuclei, cell, scale=0.5)
    assert nuc_maps.shape == cell_maps.shape == (36, 20, 3) and nuc_maps.dtype == np.uint8
    # softmax (0.2, 0.2, 0.6) x 255 rounded = (51, 51, 153), channel 0 zeroed
    np.testing.assert_array_equal(nuc_maps[0, 0], [0, 51, 153])
    np.testing.assert_array_equal(cell_maps[-1, -1], [0, 51, 153])
    seen_nuclei, seen_cell = nuclei.seen[-1], cell.seen[-1]
    assert tuple(seen_nuclei.shape) == (1, 3, 64, 32)
    expected_nuclei, expected_cell, _ = networks.network_inputs(image, scale=0.5)
    np.testing.assert_allclose(seen_nuclei[0].numpy(), expected_nuclei)
    np.testing.assert_allclose(seen_cell[0].numpy(), expected_cell)
    predict_maps([image], nuclei, cell, scale=0.5, two_channel=True)
    yellow = cell.seen[-1][0, 1].numpy()
    np.testing.assert_allclose(yellow, (0 - networks.CELL_MEAN[1]) / networks.CELL_STD, rtol=1e-6)


def test_predict_maps_batches_mixed_sizes_like_single_images():
    nuclei, cell = TinyUNet(1).eval(), TinyUNet(2).eval()
    images = [_image((64, 64), 0), _image((96, 64), 1), _image((64, 64), 2), _image((40, 72), 3)]
    batched = predict_maps(images, nuclei, cell, scale=0.5, batch_size=2)
    single = [predict_maps([im], nuclei, cell, scale=0.5, batch_size=1)[0] for im in images]
    for (bn, bc), (sn, sc), image in zip(batched, single, images, strict=True):
        assert bn.shape == (image.shape[0] // 2, image.shape[1] // 2, 3)
        assert np.abs(bn.astype(int) - sn).max() <= 1 and np.abs(bc.astype(int) - sc).max() <= 1
        assert (bn[..., 0] == 0).all() and (bc[..., 0] == 0).all()
    with pytest.raises(ValueError, match="batch_size"):
        predict_maps(images, nuclei, cell, batch_size=0)


def test_predict_maps_rejects_a_wrong_output_shape():
    class Shrinks(torch.nn.Module):
        def forward(self, x):
            return x[:, :, ::2, ::2]

    with pytest.raises(ValueError, match="N x 3 x H x W"):
        predict_maps([_image((64, 64))], Shrinks(), Shrinks(), scale=0.5)


def test_network_segmenter_from_dir(weights_dir):
    segmenter = NetworkSegmenter.from_dir(weights_dir, "cpu", batch_size=2)
    assert not segmenter.two_channel and segmenter.config == SegConfig(scale=0.25)
    images = [_image((128, 96), 0), _image((100, 132), 1)]
    maps = segmenter.maps(images)
    assert [m[0].shape for m in maps] == [(32, 24, 3), (25, 33, 3)]
    nuclei, cells = segmenter.labels(*maps[1], images[1].shape)
    assert cells.shape == (100, 132) and cells.dtype == np.int32
    results = segment(images, segmenter=segmenter, batch_size=1)
    assert [r[1].shape for r in results] == [(128, 96), (100, 132)]
    np.testing.assert_array_equal(results[1][1], cells)


def test_network_segmenter_two_channel_file_and_missing_files(tmp_path):
    torch.save(TinyUNet(1), tmp_path / WEIGHT_FILES["nuclei"])
    with pytest.raises(FileNotFoundError, match=WEIGHT_FILES["cell"]):
        NetworkSegmenter.from_dir(tmp_path)
    torch.save(TinyUNet(2), tmp_path / WEIGHT_FILES["cell_2ch"])
    segmenter = NetworkSegmenter.from_dir(tmp_path)
    assert segmenter.two_channel


def test_network_segmenter_labels_real_looking_maps():
    """With a probe network every pixel is foreground 0.6 and border 0.2: one region; with
    size filters off it becomes one cell per seed."""
    segmenter = NetworkSegmenter(ProbeNet(), ProbeNet(), scale=0.25, config=SMALL)
    ((nuclei, cells),) = segmenter.segment([_image((64, 64))])
    assert cells.shape == (64, 64) and cells.max() == 1

"""The cost-faithful stand-in for hpacellseg's networks (hpa_kit.segment.standin).

The cost is counted on the meta device (no weights, no arithmetic). One module-scoped fixture
writes the real, full-width weight files once (two ~560 MB pickles, about 10 s here) and the
end-to-end tests share it, on small images.
"""

from __future__ import annotations

import importlib
import pickletools
import sys
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from write_checks import fail_renames_to, plant_leftovers, temp_names  # noqa: E402

from hpa_kit.errors import UsageError  # noqa: E402
from hpa_kit.segment import (  # noqa: E402
    WEIGHT_FILES,
    NetworkSegmenter,
    load_segmentation_models,
    predict_maps,
    reduced_shape,
    standin,
)
from hpa_kit.synth import generate_image  # noqa: E402

# hpacellseg's DPN-92 U-Net (REFERENCE.md section 3): parameters, FLOPs per 3x512x512 forward.
REAL_PARAMS = 139e6
REAL_FLOPS = 579e9


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------- cost (meta device)


def test_cost_within_ten_percent_of_hpacellseg_networks():
    cost = standin.standin_cost(rows=512, cols=512)
    assert cost.input_shape == (1, 3, 512, 512)
    assert abs(cost.params / REAL_PARAMS - 1) < 0.10, cost.params
    assert abs(cost.flops / REAL_FLOPS - 1) < 0.10, cost.flops


def test_cost_scales_with_input_area_and_batch():
    small = standin.standin_cost(rows=64, cols=96)
    double = standin.standin_cost(rows=64, cols=96, batch=2)
    big = standin.standin_cost(rows=128, cols=192)
    assert small.params == double.params == big.params
    assert double.flops == 2 * small.flops
    assert big.flops == 4 * small.flops


@pytest.mark.parametrize("shape", [(500, 512), (512, 0), (64, 48)])
def test_cost_rejects_inputs_the_network_cannot_take(shape):
    with pytest.raises(ValueError, match="multiples of 32"):
        standin.standin_cost(rows=shape[0], cols=shape[1])


def test_encoder_levels_have_hpacellseg_widths_and_strides():
    model = standin.build_standin("cell", device="meta")
    features = model.encoder(torch.empty(1, 3, 128, 64, device="meta"))
    assert [f.shape[1] for f in features] == list(standin.WIDTHS) == [64, 336, 704, 1552, 2688]
    assert [(128 // f.shape[2], 64 // f.shape[3]) for f in features] == [
        (s, s) for s in standin.STRIDES
    ]
    assert model(torch.empty(2, 3, 128, 64, device="meta")).shape == (2, 3, 128, 64)
    upsamples = [m for m in model.modules() if isinstance(m, torch.nn.Upsample)]
    assert len(upsamples) == 5  # four decoder levels and the last step to full size


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="kind must be one of"):
        standin.build_standin("cells", device="meta")


# --------------------------------------------------------------------------- writing files


class _Small(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)


def test_refuses_to_overwrite_weight_files_it_did_not_write(tmp_path):
    existing = tmp_path / WEIGHT_FILES["cell"]
    existing.write_bytes(b"someone else's weights")
    with pytest.raises(UsageError, match="refusing to overwrite"):
        standin.write_standin_weights(tmp_path)
    assert existing.read_bytes() == b"someone else's weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == [WEIGHT_FILES["cell"]]


def test_refuses_a_file_as_folder(tmp_path):
    path = tmp_path / "weights"
    path.write_text("not a folder")
    with pytest.raises(UsageError, match="not a directory"):
        standin.write_standin_weights(path)


def test_a_failed_save_leaves_no_weight_file(tmp_path, monkeypatch):
    monkeypatch.setattr(standin, "build_standin", lambda kind, seed: _Small())

    def fail(obj, handle):
        handle.write(b"PK\x03\x04 half a file")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", fail)
    with pytest.raises(OSError, match="No space left"):
        standin.write_standin_weights(tmp_path / "w")
    assert list((tmp_path / "w").iterdir()) == []


def test_overwrite_replaces_the_files(tmp_path, monkeypatch):
    built = []
    monkeypatch.setattr(
        standin, "build_standin", lambda kind, seed: built.append((kind, seed)) or _Small()
    )
    for name in (WEIGHT_FILES["nuclei"], WEIGHT_FILES["cell"]):
        (tmp_path / name).write_bytes(b"old")
    paths = standin.write_standin_weights(tmp_path, seed=5, overwrite=True)
    assert built == [("nuclei", 5), ("cell", 6)]
    assert paths == (tmp_path / WEIGHT_FILES["nuclei"], tmp_path / WEIGHT_FILES["cell"])
    nuclei = torch.load(paths[0], weights_only=False)
    assert isinstance(nuclei, torch.nn.DataParallel) and isinstance(nuclei.module, _Small)
    assert isinstance(torch.load(paths[1], weights_only=False), _Small)


def _seeded_small(kind, seed):
    torch.manual_seed(seed)
    return _Small()


def test_writes_are_atomic_and_bytes_do_not_depend_on_the_temporary_name(tmp_path, monkeypatch):
    """A killed write's leftover goes at the next write into the folder; the same weights give
    the same bytes in two folders (torch.save records a path's name inside the archive, the
    temporary name differs every time); a failed overwrite keeps the old file."""
    monkeypatch.setattr(standin, "build_standin", _seeded_small)
    one, two = tmp_path / "one", tmp_path / "two"
    leftovers = plant_leftovers(one / WEIGHT_FILES["cell"])
    paths = standin.write_standin_weights(one, seed=3)
    assert sorted(p.name for p in one.iterdir()) == sorted(p.name for p in paths)
    assert not any(p.exists() for p in leftovers)
    for path, again in zip(paths, standin.write_standin_weights(two, seed=3), strict=True):
        assert path.read_bytes() == again.read_bytes(), path.name
    before = [p.read_bytes() for p in paths]
    fail_renames_to(monkeypatch, WEIGHT_FILES["nuclei"])
    with pytest.raises(OSError, match="Input/output error"):
        standin.write_standin_weights(one, seed=4, overwrite=True)
    assert [p.read_bytes() for p in paths] == before and temp_names(one) == []


# --------------------------------------------------------------------------- real weights


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """The real stand-in files (full widths, random weights), written once."""
    folder = tmp_path_factory.mktemp("standin_weights")
    paths = standin.write_standin_weights(folder, seed=0)
    yield folder, paths
    for path in paths:  # ~1.1 GB: do not leave it to pytest's temp-dir rotation
        path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def segmenter(weights):
    """Loaded through NetworkSegmenter.from_dir (load_segmentation_models inside)."""
    folder, _ = weights
    return NetworkSegmenter.from_dir(folder, "cpu", scale=0.25, batch_size=2, pixel_size=8.0)


def _pickled_globals(path):
    """(module, name) of every class the pickle in a torch.save zip file refers to."""
    with zipfile.ZipFile(path) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("/data.pkl")))
    found, strings = set(), []
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        elif op.name == "STACK_GLOBAL":
            found.add((strings[-2], strings[-1]))
        elif op.name == "GLOBAL":
            found.add(tuple(arg.split(" ", 1)))
    return found


def test_files_are_whole_modules_as_hpacellseg_ships_them(weights):
    _, (nuclei_path, cell_path) = weights
    nuclei, cell = _pickled_globals(nuclei_path), _pickled_globals(cell_path)
    where = (standin.StandInUNet.__module__, standin.StandInUNet.__qualname__)
    assert where == ("hpa_kit.segment.standin", "StandInUNet")
    assert where in nuclei and where in cell
    # importable by that name when unpickled in a fresh process
    assert getattr(importlib.import_module(where[0]), where[1]) is standin.StandInUNet
    parallel = ("torch.nn.parallel.data_parallel", "DataParallel")
    assert parallel in nuclei and parallel not in cell
    assert nuclei_path.stat().st_size > 500e6  # full widths: 139 M float32 parameters


def test_loads_through_load_segmentation_models(weights, segmenter):
    nuclei, cell = segmenter.nuclei_model, segmenter.cell_model
    assert type(nuclei) is standin.StandInUNet and nuclei.kind == "nuclei"  # unwrapped
    assert type(cell) is standin.StandInUNet and cell.kind == "cell"
    assert not nuclei.training and not cell.training
    for model in (nuclei, cell):
        for module in model.modules():
            if isinstance(module, torch.nn.Upsample):
                assert module.recompute_scale_factor is None
    assert sum(p.numel() for p in nuclei.parameters()) == standin.standin_cost().params
    first = next(nuclei.parameters())
    assert not torch.equal(first, next(cell.parameters()))  # seeds 0 and 1
    assert load_segmentation_models(nuclei, cell) == (nuclei, cell)


def test_predict_maps_and_segmenter_keep_the_output_contract(segmenter):
    synth = [generate_image(size=(256, 320), seed=(7, k)) for k in range(2)]
    images = [s.image for s in synth]
    maps = predict_maps(images, segmenter.nuclei_model, segmenter.cell_model, batch_size=2)
    assert len(maps) == 2
    for nuclei_maps, cell_maps in maps:
        for m in (nuclei_maps, cell_maps):
            assert m.shape == (*reduced_shape((256, 320), 0.25), 3) == (64, 80, 3)
            assert m.dtype == np.uint8 and m.flags.c_contiguous
            assert not m[..., 0].any()
            assert m[..., 2].min() < 50 and m[..., 2].max() > 200  # the maps show blobs
    ((nuclei, cells),) = segmenter.segment(images[:1])
    assert nuclei.shape == cells.shape == (256, 320)
    assert nuclei.dtype == cells.dtype == np.int32
    assert cells.max() > 0
    assert set(np.unique(nuclei[nuclei > 0])) <= set(np.unique(cells[cells > 0]))


def test_import_hpa_kit_segment_does_not_import_torch():
    code = "import sys, hpa_kit.segment; print('torch' in sys.modules)"
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

"""``hpa-kit segment``: label PNGs per id, failures reported by id, exit codes."""

from __future__ import annotations

import numpy as np
import pytest

from hpa_kit.cli import main
from hpa_kit.io import read_label_image, write_channels


def _cell_image(shape=(256, 320), center=(128, 150)):
    """One cell (radius 90 body in red and yellow, radius 36 nucleus in blue)."""
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    distance = np.hypot(rows - center[0], cols - center[1])
    image = np.full((*shape, 4), 3, np.uint8)
    image[..., 0][distance < 90] = 70
    image[..., 3][distance < 90] = 60
    image[..., 2][distance < 36] = 180
    return image


@pytest.fixture()
def images_dir(tmp_path):
    folder = tmp_path / "images"
    write_channels(folder, "a", _cell_image())
    write_channels(folder, "b", _cell_image((300, 260), (150, 130)))
    write_channels(folder, "broken", _cell_image())
    (folder / "broken_blue.png").write_bytes(b"not a png")
    return folder


def test_segment_command_writes_labels_and_reports_failures(images_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["segment", str(images_dir), "--out", str(out), "--classical", "--nuclei"])
    err = capsys.readouterr().err
    assert code == 1
    assert "wrote 2 of 3 label images" in err and "2 done, 0 skipped, 1 failed" in err
    assert "broken: CorruptImageError" in err and "broken_blue.png" in err
    for image_id, shape, center in [("a", (256, 320), (128, 150)), ("b", (300, 260), (150, 130))]:
        cells = read_label_image(out / f"{image_id}_cells.png")
        nuclei = read_label_image(out / f"{image_id}_nuclei.png")
        assert cells.shape == nuclei.shape == shape
        assert cells.max() == 1 and cells[center] == 1 and nuclei[center] == 1
    assert not (out / "broken_cells.png").exists()


def test_segment_command_all_good_exits_0(images_dir, tmp_path, capsys):
    (images_dir / "broken_blue.png").unlink()
    (images_dir / "broken_red.png").unlink()
    (images_dir / "broken_green.png").unlink()
    (images_dir / "broken_yellow.png").unlink()
    out = tmp_path / "out"
    assert main(["segment", str(images_dir), "--out", str(out), "--scale", "0.5"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a_cells.png", "b_cells.png"]
    assert "no segmenter chosen" in capsys.readouterr().err
    assert main(["segment", str(images_dir), "--out", str(out), "--classical"]) == 0
    assert "no segmenter chosen" not in capsys.readouterr().err


def test_segment_command_names_an_id_without_its_red_file(images_dir, tmp_path, capsys):
    """Ids come from any channel file: an id without red is a named failure (exit 1), not
    silently skipped."""
    (images_dir / "broken_blue.png").unlink()
    (images_dir / "a_red.png").unlink()
    out = tmp_path / "out"
    assert main(["segment", str(images_dir), "--out", str(out), "--classical"]) == 1
    err = capsys.readouterr().err
    assert "a: missing channel(s) red" in err and "broken: missing channel(s) blue" in err
    assert "wrote 1 of 3 label images" in err
    assert sorted(p.name for p in out.iterdir()) == ["b_cells.png"]


def test_segment_command_workers_give_the_same_labels(images_dir, tmp_path):
    """Two worker processes write the same label images as this process does."""
    (images_dir / "broken_blue.png").unlink()
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["segment", str(images_dir), "--out", str(one), "--classical"]) == 1
    argv = ["segment", str(images_dir), "--out", str(two), "--classical", "--workers", "2"]
    assert main(argv) == 1
    for name in ("a_cells.png", "b_cells.png"):
        assert np.array_equal(read_label_image(one / name), read_label_image(two / name))


def test_segment_command_with_weights(images_dir, tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from test_segment_helpers import TinyUNet

    from hpa_kit.segment import WEIGHT_FILES

    weights = tmp_path / "weights"
    weights.mkdir()
    out = tmp_path / "out"
    assert main(["segment", str(images_dir), "--out", str(out), "--weights-dir", str(weights)]) == 2
    assert WEIGHT_FILES["nuclei"] in capsys.readouterr().err
    torch.save(TinyUNet(1), weights / WEIGHT_FILES["nuclei"])
    torch.save(TinyUNet(2), weights / WEIGHT_FILES["cell"])
    args = ["segment", str(images_dir), "--out", str(out), "--weights-dir", str(weights)]
    assert main([*args, "--batch-size", "2"]) == 1  # "broken" fails, the rest are written
    assert read_label_image(out / "a_cells.png").shape == (256, 320)
    assert read_label_image(out / "b_cells.png").shape == (300, 260)


def test_segment_command_bad_arguments(tmp_path, capsys):
    assert main(["segment", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    tmp_path.joinpath("empty").mkdir()
    assert main(["segment", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert main(["segment", str(tmp_path), "--out", str(tmp_path / "o"), "--scale", "0"]) == 2
    assert "no images" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["segment", str(tmp_path), "--out", "o", "--classical", "--weights-dir", "w"])


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--scale", "inf", "SegConfig.scale must be in (0, 4], got inf"),
        ("--scale", "nan", "SegConfig.scale must be in (0, 4], got nan"),
        ("--pixel-size", "-1", "pixel_size (full-resolution pixels per image pixel) must be"),
        ("--workers", "-1", "workers must be an integer in [0, 256], got -1"),
        ("--workers", "100000", "workers must be an integer in [0, 256], got 100000"),
    ],
)
def test_segment_command_absurd_numbers_exit_2(
    images_dir, tmp_path, capsys, option, value, message
):
    out = tmp_path / "o"
    assert main(["segment", str(images_dir), "--out", str(out), option, value]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()

"""Tests for hpa_kit.prepare and `hpa-kit prepare`."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from hpa_kit.cli import main
from hpa_kit.errors import UsageError
from hpa_kit.io import CHANNELS, read_channel, resize_area, to_uint8
from hpa_kit.prepare import find_sources, prepare_images


def _write(path, array):
    assert cv2.imwrite(str(path), array)


def _random_planes(seed, shape, dtype):
    rng = np.random.default_rng(seed)
    high = np.iinfo(dtype).max
    return {c: rng.integers(0, high, size=shape, endpoint=True).astype(dtype) for c in CHANNELS}


@pytest.fixture()
def src(tmp_path):
    """a8: 8-bit PNGs 40x60; b16: 16-bit TIFFs 50x50; c16: 16-bit .TIF (upper case) 30x20."""
    folder = tmp_path / "src"
    folder.mkdir()
    planes = {
        "a8": _random_planes(0, (40, 60), np.uint8),
        "b16": _random_planes(1, (50, 50), np.uint16),
        "c16": _random_planes(2, (30, 20), np.uint16),
    }
    for color, plane in planes["a8"].items():
        _write(folder / f"a8_{color}.png", plane)
    for color, plane in planes["b16"].items():
        _write(folder / f"b16_{color}.tif", plane)
    for color, plane in planes["c16"].items():
        _write(folder / f"c16_{color}.tif", plane)
        (folder / f"c16_{color}.tif").rename(folder / f"c16_{color}.TIF")
    return folder, planes


def test_find_sources_names(tmp_path):
    for name in [
        "a_red.png", "a_green.png", "a_blue.png", "a_yellow.tif",  # complete, mixed formats
        "b_red.png", "b_green.png", "b_blue.png",  # yellow missing
        "c_red.png", "c_green.png", "c_blue.png", "c_yellow.png", "c_yellow.tiff",  # double
        ".a_red.tmp12.png", "notes.txt", "d_purple.png", "x_y_red_green.png",
    ]:  # fmt: skip
        (tmp_path / name).write_bytes(b"")
    sources, problems = find_sources(tmp_path, channels=CHANNELS)
    assert list(sources) == ["a"]
    assert sources["a"]["yellow"] == tmp_path / "a_yellow.tif"
    assert sorted(problems) == ["b", "c", "x_y_red"]
    assert problems["b"].startswith("missing channel(s) yellow")
    assert "c_yellow.png, c_yellow.tiff" in problems["c"]
    sources3, problems3 = find_sources(tmp_path, channels=("red", "green", "blue"))
    assert sorted(sources3) == ["a", "b", "c"] and sorted(problems3) == ["x_y_red"]


def test_literal_area_resize_16_bit(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    plane8 = np.array(
        [[10, 20, 0, 0], [30, 40, 0, 4], [255, 255, 1, 3], [255, 255, 5, 7]], dtype=np.uint8
    )
    for color in CHANNELS:
        _write(src / f"x_{color}.tif", plane8.astype(np.uint16) * 257)  # exact 16-bit widening
    report = prepare_images(src, dst, size=2, progress=False)
    assert report.done == ["x"] and report.ok
    for color in CHANNELS:
        out = cv2.imread(str(dst / f"x_{color}.png"), cv2.IMREAD_UNCHANGED)
        assert out.dtype == np.uint8
        np.testing.assert_array_equal(out, [[25, 1], [255, 4]])


def test_prepare_8_and_16_bit(src, tmp_path):
    folder, planes = src
    dst = tmp_path / "dst"
    report = prepare_images(folder, dst, size=16, progress=False)
    assert sorted(report.done) == ["a8", "b16", "c16"] and report.ok
    for image_id, channels in planes.items():
        for color, plane in channels.items():
            out = cv2.imread(str(dst / f"{image_id}_{color}.png"), cv2.IMREAD_UNCHANGED)
            assert out.shape == (16, 16) and out.dtype == np.uint8
            np.testing.assert_array_equal(out, resize_area(to_uint8(plane), 16))
    assert sorted(p.name for p in dst.iterdir()) == sorted(
        f"{i}_{c}.png" for i in planes for c in CHANNELS
    )  # no temporary files left


def test_prepare_non_square_size(src, tmp_path):
    folder, planes = src
    report = prepare_images(folder, tmp_path / "dst", size=(8, 12), channels=("green",))
    assert report.ok
    out = read_channel(tmp_path / "dst" / "a8_green.png")
    np.testing.assert_array_equal(out, resize_area(planes["a8"]["green"], (8, 12)))


def test_prepare_resume(src, tmp_path):
    folder, _ = src
    dst = tmp_path / "dst"
    prepare_images(folder, dst, size=16, progress=False)
    stamps = {p.name: p.stat().st_mtime_ns for p in dst.iterdir()}
    again = prepare_images(folder, dst, size=16, progress=False)
    assert again.done == [] and sorted(again.skipped) == ["a8", "b16", "c16"]
    assert set(again.skipped.values()) == {"already done"}
    assert {p.name: p.stat().st_mtime_ns for p in dst.iterdir()} == stamps
    # An interrupted id: one channel missing, a stray temporary file from a killed write.
    (dst / "b16_yellow.png").unlink()
    (dst / ".b16_yellow.tmp999.png").write_bytes(b"\x89PNG half")
    third = prepare_images(folder, dst, size=16, progress=False)
    assert third.done == ["b16"] and sorted(third.skipped) == ["a8", "c16"]
    assert (dst / "b16_yellow.png").is_file()
    for name, stamp in stamps.items():
        if name != "b16_yellow.png":
            assert (dst / name).stat().st_mtime_ns == stamp, name


def test_prepare_failures_recorded_and_others_done(src, tmp_path):
    folder, _ = src
    (folder / "a8_green.png").write_bytes(b"not a png at all")
    (folder / "b16_blue.tif").unlink()
    report = prepare_images(folder, tmp_path / "dst", size=16, progress=False)
    assert report.done == ["c16"]
    assert sorted(report.failed) == ["a8", "b16"]
    assert "CorruptImageError" in report.failed["a8"]
    assert str(folder / "a8_green.png") in report.failed["a8"]
    assert report.failed["b16"].startswith("missing channel(s) blue")
    assert not (tmp_path / "dst" / "a8_green.png").exists()
    assert report.exit_code == 1


def test_prepare_cli(src, tmp_path, capsys):
    folder, _ = src
    dst = tmp_path / "dst"
    argv = ["prepare", str(folder), str(dst), "--size", "8", "--workers", "1", "--quiet"]
    assert main(argv) == 0
    assert "3 done, 0 skipped, 0 failed" in capsys.readouterr().out
    assert read_channel(dst / "c16_red.png").shape == (8, 8)
    (folder / "a8_red.png").write_bytes(b"")
    (dst / "a8_red.png").unlink()
    failures = tmp_path / "failures.csv"
    assert main(argv + ["--failures-csv", str(failures)]) == 1
    captured = capsys.readouterr()
    assert "0 done, 2 skipped (already done: 2), 1 failed" in captured.err
    assert "a8: CorruptImageError" in captured.err
    assert failures.read_text().splitlines()[1].startswith('a8,"CorruptImageError')


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"size": 0}, ValueError, "size must be positive"),
        ({"size": (4,)}, ValueError, "size must be an int"),
        ({"size": 4.0}, ValueError, "size must be an int"),
        ({"workers": 0}, ValueError, "workers"),
        ({"workers": 10**6}, UsageError, r"workers must be an integer in \[1, 256\]"),
        ({"size": 10**6}, UsageError, r"size must be an integer in \[1, 16384\]"),
    ],
)
def test_prepare_bad_arguments(src, tmp_path, kwargs, error, message):
    with pytest.raises(error, match=message):
        prepare_images(src[0], tmp_path / "dst", **kwargs)


def test_prepare_bad_folders(src, tmp_path):
    with pytest.raises(ValueError, match="must differ"):
        prepare_images(src[0], src[0], size=8)
    with pytest.raises(UsageError, match="source folder not found"):
        prepare_images(tmp_path / "nope", tmp_path / "dst", size=8)


def test_prepare_real_samples_two_workers(samples_dir, sample_ids, tmp_path):
    """The four real images (2048 and 3072 px) into 64 px, two processes."""
    report = prepare_images(samples_dir / "images", tmp_path, size=64, workers=2, progress=False)
    assert sorted(report.done) == sorted(sample_ids) and report.ok
    for image_id in sample_ids[2:]:  # includes the 3072 px image
        for color in CHANNELS:
            src_path = samples_dir / "images" / f"{image_id}_{color}.png"
            expected = resize_area(read_channel(src_path), 64)
            np.testing.assert_array_equal(
                read_channel(tmp_path / f"{image_id}_{color}.png"), expected
            )


# ---- hpa_kit.batch.BatchReport (the record prepare and download-public return) ----


def test_batch_report_summary_and_csv(tmp_path):
    from hpa_kit.batch import BatchReport

    report = BatchReport()
    report.add_done("a")
    report.add_skipped("b", "already done")
    report.add_skipped("c", "already done")
    report.add_failure("z", "HTTP 404: http://x/z")
    report.add_failure("y", "bad")
    assert (report.ok, report.total, report.exit_code) == (False, 5, 1)
    assert report.summary(max_failures=1).splitlines() == [
        "1 done, 2 skipped (already done: 2), 2 failed",
        "failed:",
        "  y: bad",
        "  ... and 1 more",
    ]
    path = report.write_failures(tmp_path / "f" / "failures.csv")
    assert path.read_text().splitlines() == ["ID,cause", "y,bad", "z,HTTP 404: http://x/z"]
    assert report.to_dict()["skipped"] == {"b": "already done", "c": "already done"}
    empty = BatchReport()
    assert (empty.ok, empty.exit_code, empty.summary()) == (True, 0, "0 done, 0 skipped, 0 failed")


def test_batch_report_rejects_an_id_twice():
    from hpa_kit.batch import BatchReport

    report = BatchReport(done=["a"])
    with pytest.raises(ValueError, match="'a' recorded twice"):
        report.add_failure("a", "late failure")
    with pytest.raises(ValueError, match="more than one group"):
        BatchReport(done=["a"], failed={"a": "x"})


def test_prepare_cli_bad_input(src, tmp_path, capsys):
    assert main(["prepare", str(tmp_path / "none"), str(tmp_path / "dst"), "--quiet"]) == 2
    assert "source folder not found" in capsys.readouterr().err
    for option, value in [("--size", "0"), ("--size", "100000"), ("--workers", "-2")]:
        argv = ["prepare", str(src[0]), str(tmp_path / "dst"), option, value, "--quiet"]
        assert main(argv) == 2, (option, value)
        assert "must be" in capsys.readouterr().err
    assert not (tmp_path / "dst").exists()

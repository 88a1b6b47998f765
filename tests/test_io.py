"""Tests for hpa_kit.io: the 16-bit rule on literal values, reading/writing channels and label
images, every error path, area resizing, and channel order on the real sample images."""

from __future__ import annotations

import re
import subprocess
import sys

import cv2
import numpy as np
import pytest

from hpa_kit.io import (
    CHANNEL_MEAN,
    CHANNEL_STD,
    CHANNELS,
    ChannelMismatchError,
    CorruptImageError,
    ImageError,
    ImageShapeError,
    MissingChannelError,
    MissingImageError,
    atomic_path,
    channel_path,
    check_channels,
    check_normalisation,
    list_image_ids,
    read_channel,
    read_image,
    read_label_image,
    resize_area,
    to_uint8,
    write_channels,
    write_label_image,
)


def _write(path, array) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


def _image_set(folder, image_id, shape=(6, 8), channels=CHANNELS, dtype=np.uint8):
    """Channel files whose value at (r, c) encodes channel, row and column."""
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    planes = {}
    for k, color in enumerate(channels):
        plane = (k * 60 + rows * shape[1] + cols).astype(dtype)
        _write(channel_path(folder, image_id, color), plane)
        planes[color] = plane
    return planes


# --- the 16-bit rule ---------------------------------------------------------------------------


def test_to_uint8_literal_values():
    values = np.array([0, 127, 128, 129, 257, 385, 386, 32767, 65406, 65407, 65535], np.uint16)
    # (v + 128) // 257, by hand: 128 -> 256 // 257 = 0, 129 -> 1, 385 -> 513 // 257 = 1, ...
    assert to_uint8(values).tolist() == [0, 0, 0, 1, 1, 1, 2, 127, 254, 255, 255]
    assert to_uint8(values).dtype == np.uint8


def test_to_uint8_inverts_8_to_16_bit_widening():
    levels = np.arange(256, dtype=np.uint16)
    assert np.array_equal(to_uint8(levels * 257), levels.astype(np.uint8))


def test_to_uint8_is_nearest_level_and_monotonic():
    values = np.arange(65536, dtype=np.uint16)
    out = to_uint8(values).astype(np.int64)
    assert np.all(np.diff(out) >= 0)
    error = np.abs(out / 255 - values / 65535)
    assert error.max() <= 0.5 / 255 + 1e-12


def test_to_uint8_passes_uint8_through_unchanged():
    array = np.array([[0, 7, 255]], dtype=np.uint8)
    assert to_uint8(array) is array


@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.int16, np.bool_])
def test_to_uint8_rejects_other_dtypes(dtype):
    with pytest.raises(ImageShapeError, match="uint8 or uint16"):
        to_uint8(np.zeros((2, 2), dtype=dtype))


# --- reading channels and images ---------------------------------------------------------------


def test_read_channel_16_bit_png_and_tif(tmp_path):
    plane = np.array([[0, 128, 129], [385, 386, 65535]], dtype=np.uint16)
    for name in ("c.png", "c.tif"):
        _write(tmp_path / name, plane)
        out = read_channel(tmp_path / name)
        assert out.dtype == np.uint8
        assert out.tolist() == [[0, 0, 1], [1, 2, 255]]


def test_read_image_stacks_channels_in_requested_order(tmp_path):
    planes = _image_set(tmp_path, "img")
    image = read_image(tmp_path, "img")
    assert image.shape == (6, 8, 4) and image.dtype == np.uint8 and image.flags.c_contiguous
    for k, color in enumerate(CHANNELS):
        assert np.array_equal(image[:, :, k], planes[color])
    rgb = read_image(tmp_path, "img", channels=("red", "green", "blue"))
    assert np.array_equal(rgb, image[:, :, :3])
    swapped = read_image(tmp_path, "img", channels=["yellow", "blue", "blue"])
    assert np.array_equal(swapped, image[:, :, [3, 2, 2]])


def test_read_image_16_bit_channels(tmp_path):
    rows, cols = np.mgrid[:4, :5]
    for color in CHANNELS:
        _write(channel_path(tmp_path, "deep", color), ((rows * 5 + cols) * 257).astype(np.uint16))
    image = read_image(tmp_path, "deep")
    assert image.dtype == np.uint8
    assert np.array_equal(image[:, :, 1], (rows * 5 + cols).astype(np.uint8))


def test_read_image_tif_extension(tmp_path):
    for color in ("red", "green", "blue"):
        _write(channel_path(tmp_path, "t", color, ext=".tif"), np.full((3, 4), 9, np.uint8))
    image = read_image(tmp_path, "t", channels=("red", "green", "blue"), ext=".tif")
    assert image.shape == (3, 4, 3) and (image == 9).all()


def test_read_image_resize_square_and_non_square(tmp_path):
    _image_set(tmp_path, "img", shape=(40, 60))
    assert read_image(tmp_path, "img", size=20).shape == (20, 20, 4)
    assert read_image(tmp_path, "img", size=(10, 30)).shape == (10, 30, 4)
    full = read_image(tmp_path, "img")
    expected = cv2.resize(full, (30, 10), interpolation=cv2.INTER_AREA)
    assert np.array_equal(read_image(tmp_path, "img", size=(10, 30)), expected)
    assert np.array_equal(read_image(tmp_path, "img", size=(40, 60)), full)


def test_channel_path():
    assert channel_path("a/b", "id1", "green").as_posix() == "a/b/id1_green.png"
    assert channel_path("a", "id1", "red", ext="tif").as_posix() == "a/id1_red.tif"


# --- errors ------------------------------------------------------------------------------------


def test_missing_channel_names_the_path(tmp_path):
    _image_set(tmp_path, "img", channels=("red", "blue", "yellow"))
    missing = channel_path(tmp_path, "img", "green")
    with pytest.raises(MissingChannelError, match=re.escape(str(missing))) as info:
        read_image(tmp_path, "img")
    assert isinstance(info.value, FileNotFoundError)
    assert isinstance(info.value, ImageError) and isinstance(info.value, ValueError)
    # The same id read without green works.
    assert read_image(tmp_path, "img", channels=("red", "blue")).shape == (6, 8, 2)


def test_channels_of_different_sizes(tmp_path):
    _image_set(tmp_path, "img")
    _write(channel_path(tmp_path, "img", "yellow"), np.zeros((6, 9), np.uint8))
    with pytest.raises(ChannelMismatchError, match=r"'img'.*yellow \(6, 9\)") as info:
        read_image(tmp_path, "img")
    assert "red (6, 8)" in str(info.value)


def test_truncated_png_is_corrupt(tmp_path):
    path = tmp_path / "x_red.png"
    _write(path, (np.arange(64 * 64) % 251).astype(np.uint8).reshape(64, 64))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptImageError, match=re.escape(str(path))):
        read_channel(path)
    path.write_bytes(data[:-12])  # only the IEND chunk missing
    with pytest.raises(CorruptImageError):
        read_channel(path)


@pytest.mark.parametrize("content", [b"", b"this is not an image", b"\x89PNG\r\n\x1a\n"])
def test_unreadable_file_is_corrupt(tmp_path, content):
    path = tmp_path / "x_red.png"
    path.write_bytes(content)
    with pytest.raises(CorruptImageError, match=re.escape(str(path))):
        read_channel(path)
    with pytest.raises(CorruptImageError):
        read_image(tmp_path, "x", channels=("red",))


def test_colour_file_with_different_planes_is_rejected(tmp_path):
    path = tmp_path / "c.png"
    colour = np.zeros((4, 5, 3), np.uint8)
    colour[:, :, 1] = 200  # an HPA-website style green image stored as colour
    _write(path, colour)
    with pytest.raises(ImageShapeError, match=r"3 planes that differ.*\(4, 5, 3\)"):
        read_channel(path)


def test_colour_file_with_equal_planes_is_converted(tmp_path):
    grey = (np.arange(20).reshape(4, 5) * 12).astype(np.uint8)
    _write(tmp_path / "bgr.png", np.dstack([grey] * 3))
    assert np.array_equal(read_channel(tmp_path / "bgr.png"), grey)
    _write(tmp_path / "bgra.png", np.dstack([grey] * 3 + [np.full_like(grey, 255)]))
    assert np.array_equal(read_channel(tmp_path / "bgra.png"), grey)
    _write(tmp_path / "clear.png", np.dstack([grey] * 3 + [np.zeros_like(grey)]))
    with pytest.raises(ImageShapeError, match="4 planes"):
        read_channel(tmp_path / "clear.png")


def test_bad_channels_and_sizes_arguments(tmp_path):
    _image_set(tmp_path, "img")
    with pytest.raises(ValueError, match="sequence of colour names"):
        read_image(tmp_path, "img", channels="rgb")
    with pytest.raises(ValueError, match="empty"):
        read_image(tmp_path, "img", channels=())
    for size in (0, (3, 0), (1, 2, 3), 2.5, True):
        with pytest.raises(ValueError, match="size"):
            read_image(tmp_path, "img", size=size)


def test_unknown_or_repeated_channel_names(tmp_path):
    _image_set(tmp_path, "img")
    with pytest.raises(ValueError, match=r"unknown channels \['purple'\]"):
        read_image(tmp_path, "img", channels=("red", "purple"))
    with pytest.raises(ValueError, match="distinct"):  # writing one file twice is a mistake
        write_channels(tmp_path, "w", np.zeros((2, 2, 2), np.uint8), channels=("red", "red"))
    assert not list(tmp_path.glob("w_*"))


def test_atomic_path_keeps_the_old_file_when_the_write_fails(tmp_path):
    target = tmp_path / "sub" / "x.png"
    with atomic_path(target) as temp:
        assert temp.parent == target.parent and temp.suffix == ".png" and temp.name[0] == "."
        temp.write_bytes(b"first")
    assert target.read_bytes() == b"first"
    with pytest.raises(RuntimeError, match="half written"):
        with atomic_path(target) as temp:
            temp.write_bytes(b"half")
            raise RuntimeError("half written")
    assert target.read_bytes() == b"first"
    assert [p.name for p in target.parent.iterdir()] == ["x.png"]  # no temporary file left
    with pytest.raises(FileNotFoundError):  # the block wrote nothing: an error, not a success
        with atomic_path(tmp_path / "never.txt"):
            pass
    assert not list(tmp_path.glob("*never*"))


# --- the channel and normalisation rules (one home, used by augment, model and demo) -----------


def test_check_channels_literals():
    assert CHANNELS == ("red", "green", "blue", "yellow")
    assert check_channels(["yellow", "red"]) == ("yellow", "red")
    assert check_channels(("green", "green"), repeats=True) == ("green", "green")
    bad = {
        "rgb": "sequence of colour names",
        ("red", 3): "sequence of colour names",
        (): "empty",
        ("red", "Red"): r"unknown channels \['Red'\]",
        ("blue", "blue"): "distinct",
    }
    for channels, message in bad.items():
        with pytest.raises(ValueError, match=message):
            check_channels(channels)


def test_check_normalisation_literals():
    assert check_normalisation(CHANNELS) == (
        (0.0807, 0.0524, 0.0539, 0.0810),
        (0.1481, 0.1095, 0.1565, 0.2729),
    )
    assert check_normalisation(("yellow",)) == ((CHANNEL_MEAN["yellow"],), (CHANNEL_STD["yellow"],))
    # given values become floats; a missing one still takes the seed's value
    assert check_normalisation(("red", "blue"), mean=[0, 1]) == ((0.0, 1.0), (0.1481, 0.1565))
    assert check_normalisation(("red",), std=np.array([2])) == ((0.0807,), (2.0,))
    for mean, std, message in (
        ((0.1,), None, "one value per channel"),
        (None, (0.1, 0.2, 0.3), "one value per channel"),
        (None, (0.1, 0.0), "positive"),
        (None, (0.1, -1.0), "positive"),
        (None, (0.1, float("nan")), "positive"),
    ):
        with pytest.raises(ValueError, match=message):
            check_normalisation(("red", "green"), mean=mean, std=std)
    with pytest.raises(ValueError, match="distinct"):
        check_normalisation(("red", "red"))


# --- resize ------------------------------------------------------------------------------------


def test_resize_area_literal_block_means():
    image = np.array(
        [[0, 2, 4, 6], [2, 4, 6, 8], [10, 10, 20, 20], [10, 10, 20, 20]], dtype=np.uint8
    )
    assert resize_area(image, 2).tolist() == [[2, 6], [10, 20]]
    assert resize_area(image, (1, 2)).tolist() == [[6, 13]]


def test_resize_area_keeps_dtype_and_dimensions():
    assert resize_area(np.zeros((8, 6), np.uint16), (4, 3)).dtype == np.uint16
    assert resize_area(np.zeros((8, 6), np.float32), 2).shape == (2, 2)
    assert resize_area(np.zeros((8, 6, 1), np.uint8), (4, 3)).shape == (4, 3, 1)
    assert resize_area(np.zeros((8, 6, 7), np.uint8), (4, 3)).shape == (4, 3, 7)
    assert resize_area(np.zeros((5, 7, 4), np.uint8), (10, 3)).shape == (10, 3, 4)


def test_resize_area_same_size_returns_a_copy():
    image = np.arange(12, dtype=np.uint8).reshape(3, 4)
    out = resize_area(image, (3, 4))
    assert np.array_equal(out, image) and out is not image
    out[0, 0] = 99
    assert image[0, 0] == 0


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((4, 4), np.int32), "cannot area-resize dtype int32"),
        (np.zeros(4, np.uint8), "HxW"),
        (np.zeros((0, 4), np.uint8), "HxW"),
    ],
)
def test_resize_area_rejects_bad_images(image, message):
    with pytest.raises(ImageShapeError, match=message):
        resize_area(image, 2)


# --- writing channels, listing ids -------------------------------------------------------------


def test_write_channels_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(5, 7, 4), dtype=np.uint8)
    paths = write_channels(tmp_path / "out", "w1", image)
    assert [p.name for p in paths] == [f"w1_{c}.png" for c in CHANNELS]
    assert np.array_equal(read_image(tmp_path / "out", "w1"), image)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in paths)
    rgb = image[:, :, :3]
    write_channels(tmp_path / "rgb", "w2", rgb, channels=("red", "green", "blue"))
    assert np.array_equal(
        read_image(tmp_path / "rgb", "w2", channels=("red", "green", "blue")), rgb
    )


@pytest.mark.parametrize(
    "image",
    [np.zeros((5, 7, 3), np.uint8), np.zeros((5, 7), np.uint8), np.zeros((5, 7, 4), np.uint16)],
)
def test_write_channels_rejects_wrong_shape_or_dtype(tmp_path, image):
    with pytest.raises(ImageShapeError, match="HxWx4 uint8"):
        write_channels(tmp_path, "bad", image)
    assert list(tmp_path.iterdir()) == []


def test_write_failure_raises_image_error_and_leaves_nothing(tmp_path):
    with pytest.raises(ImageError, match="could not write"):
        write_channels(tmp_path, "w", np.zeros((2, 2, 1), np.uint8), channels=("red",), ext=".xyz")
    assert list(tmp_path.iterdir()) == []


def test_list_image_ids(tmp_path):
    for image_id in ("b", "a", "c_1"):
        _write(channel_path(tmp_path, image_id, "red"), np.zeros((2, 2), np.uint8))
    _write(channel_path(tmp_path, "g1", "green"), np.zeros((2, 2), np.uint8))
    (tmp_path / "notes_red.txt").write_text("x")
    assert list_image_ids(tmp_path) == ["a", "b", "c_1"]
    assert list_image_ids(tmp_path, channel="green") == ["g1"]
    assert list_image_ids(tmp_path, ext=".txt") == ["notes"]
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list_image_ids(tmp_path / "nowhere")


# --- label images ------------------------------------------------------------------------------


def test_label_image_16_bit_round_trip(tmp_path):
    labels = np.array([[0, 1, 255], [256, 65535, 7]], dtype=np.int64)
    path = write_label_image(tmp_path / "sub" / "labels.png", labels)
    assert path == tmp_path / "sub" / "labels.png"
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16  # written as a 16-bit PNG
    back = read_label_image(path)
    assert back.dtype == np.int32 and back.tolist() == labels.tolist()
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["labels.png"]


def test_read_8_bit_label_image(tmp_path):
    _write(tmp_path / "l8.png", np.array([[0, 3], [200, 255]], dtype=np.uint8))
    labels = read_label_image(tmp_path / "l8.png")
    assert labels.dtype == np.int32 and labels.tolist() == [[0, 3], [200, 255]]


@pytest.mark.parametrize(
    "labels, message",
    [
        (np.array([[0, 65536]], dtype=np.int32), "65536 does not fit"),
        (np.array([[0, -1]], dtype=np.int32), "negative"),
        (np.zeros((2, 2), dtype=np.float32), "integer dtype"),
        (np.zeros((2, 2), dtype=bool), "integer dtype"),
        (np.zeros((2, 2, 1), dtype=np.int32), "2-D"),
        (np.zeros((0, 2), dtype=np.int32), "2-D"),
    ],
)
def test_write_label_image_rejects_bad_labels(tmp_path, labels, message):
    with pytest.raises(ImageShapeError, match=message):
        write_label_image(tmp_path / "l.png", labels)
    assert not (tmp_path / "l.png").exists()


def test_write_label_image_rejects_lossy_extension(tmp_path):
    with pytest.raises(ValueError, match=r"\.png"):
        write_label_image(tmp_path / "l.jpg", np.zeros((2, 2), np.int32))


def test_read_label_image_errors(tmp_path):
    missing = tmp_path / "none.png"
    with pytest.raises(MissingImageError, match=re.escape(str(missing))) as info:
        read_label_image(missing)
    assert isinstance(info.value, FileNotFoundError)
    _write(tmp_path / "colour.png", np.zeros((3, 3, 3), np.uint8))
    with pytest.raises(ImageShapeError, match=r"2-D greyscale label image.*\(3, 3, 3\)"):
        read_label_image(tmp_path / "colour.png")
    (tmp_path / "junk.png").write_bytes(b"junk")
    with pytest.raises(CorruptImageError, match="junk.png"):
        read_label_image(tmp_path / "junk.png")


def test_import_does_not_load_cv2():
    # Only this module's own imports are checked.
    code = (
        "import sys, hpa_kit; before = 'cv2' in sys.modules; import hpa_kit.io; "
        "assert before or 'cv2' not in sys.modules, 'eager import'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- real sample images (second tier) ----------------------------------------------------------


def test_real_images_channel_order(samples_dir, sample_ids):
    folder = samples_dir / "images"
    assert list_image_ids(folder) == sorted(sample_ids)
    for image_id in (sample_ids[0], sample_ids[2]):  # a 2048 and the 3072 image
        rgby = read_image(folder, image_id)
        size = 3072 if image_id == sample_ids[2] else 2048
        assert rgby.shape == (size, size, 4) and rgby.dtype == np.uint8
        for k, color in enumerate(CHANNELS):
            direct = cv2.imread(str(folder / f"{image_id}_{color}.png"), cv2.IMREAD_UNCHANGED)
            assert np.array_equal(rgby[:, :, k], direct), color
        rgb = read_image(folder, image_id, channels=("red", "green", "blue"))
        assert np.array_equal(rgb, rgby[:, :, :3])
        assert not np.array_equal(rgby[:, :, 0], rgby[:, :, 2])  # the order matters here


def test_real_image_resize(samples_dir, sample_ids):
    folder = samples_dir / "images"
    small = read_image(folder, sample_ids[1], size=512)
    full = read_image(folder, sample_ids[1])
    assert small.shape == (512, 512, 4)
    expected = cv2.resize(full, (512, 512), interpolation=cv2.INTER_AREA)
    assert np.array_equal(small, expected)
    # Area interpolation by an integer factor is the block mean (up to rounding).
    block_mean = full[:, :, 1].reshape(512, 4, 512, 4).mean(axis=(1, 3))
    assert np.abs(small[:, :, 1] - block_mean).max() <= 1


def test_real_label_images(samples_dir, sample_ids):
    for image_id, cells in zip(sample_ids, (19, 18, 10, 10), strict=True):
        labels = read_label_image(samples_dir / "masks" / f"{image_id}_predictedmask.png")
        assert labels.dtype == np.int32 and labels.ndim == 2
        assert labels.min() == 0
        assert len(np.unique(labels)) - 1 == cells

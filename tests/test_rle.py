"""Tests for hpa_kit.rle: literal vectors, the competition's empty-mask strings, round trips,
the one-pass label-image encoder against per-cell encoding, and input errors."""

from __future__ import annotations

import base64
import csv
import subprocess
import sys
import zlib

import numpy as np
import pycocotools.mask as coco_mask
import pytest

from hpa_kit.rle import (
    RLEError,
    decode_binary_mask,
    decoded_cache_info,
    empty_mask_string,
    encode_binary_mask,
    encode_label_image,
    mask_area,
    mask_counts,
    max_counts_bytes,
    to_coco_rle,
)

# REFERENCE.md section 1: the all-empty mask at the three test-set sizes.
EMPTY_STRINGS = {
    2048: "eNoLCAgIMAEABJkBdQ==",
    1728: "eNoLCAjJNgIABNkBkg==",
    3072: "eNoLCAgIsAQABJ4Beg==",
}


def _text(coco_counts: bytes) -> str:
    """Steps 4 and 5 of the encoding, written out with the standard library only."""
    return base64.b64encode(zlib.compress(coco_counts, 9)).decode("ascii")


def _reference_encode(mask: np.ndarray) -> str:
    """The competition's reference encoder, as REFERENCE.md section 1 describes it."""
    fortran = np.asfortranarray(mask.astype(np.uint8).reshape(mask.shape[0], mask.shape[1], 1))
    return _text(coco_mask.encode(fortran)[0]["counts"])


def _per_cell(labels: np.ndarray) -> dict[int, str]:
    return {int(i): encode_binary_mask(labels == i) for i in np.unique(labels) if i != 0}


# --- literal arrays with hand-computed encodings ---------------------------------------------


def test_literal_mask_runs_are_column_major():
    # Column-major pixels: col 0 -> 0 0, col 1 -> 1 1, col 2 -> 1 0: runs 2 zeros, 3 ones, 1 zero.
    mask = np.array([[0, 1, 1], [0, 1, 0]], dtype=bool)
    text = encode_binary_mask(mask)
    assert text == _text(b"231")
    assert mask_counts(text, 2, 3).tolist() == [2, 3, 1]
    assert to_coco_rle(text, 2, 3) == {"size": [2, 3], "counts": b"231"}
    assert decode_binary_mask(text, 2, 3).tolist() == mask.tolist()


def test_literal_first_pixel_set_gives_leading_zero_run():
    mask = np.ones((2, 2), dtype=bool)
    text = encode_binary_mask(mask)
    assert text == _text(b"04")
    assert mask_counts(text, 2, 2).tolist() == [0, 4]


def test_literal_differential_and_negative_counts():
    # One row: runs [0, 1, 2, 3, 1, 1]. From the 4th count on pycocotools stores the difference
    # to the count two before: 3-1 = 2 -> "2", 1-2 = -1 -> 31+48 = "O", 1-3 = -2 -> 30+48 = "N".
    mask = np.array([[1, 0, 0, 1, 1, 1, 0, 1]], dtype=bool)
    text = encode_binary_mask(mask)
    assert to_coco_rle(text, 1, 8)["counts"] == b"0122ON"
    assert text == _text(b"0122ON")
    assert mask_counts(text, 1, 8).tolist() == [0, 1, 2, 3, 1, 1]


def test_literal_multi_character_count():
    # 40 = 0b1_01000: low 5 bits 8 with the continuation bit (32) -> 88 "X", then 1 -> "1".
    assert to_coco_rle(empty_mask_string(1, 40), 1, 40)["counts"] == b"X1"
    assert empty_mask_string(1, 40) == _text(b"X1")
    assert empty_mask_string(40, 1) == _text(b"X1")


def test_integer_zero_one_mask_equals_bool_mask():
    mask = np.array([[0, 1], [1, 1], [0, 0]], dtype=np.uint8)
    assert encode_binary_mask(mask) == encode_binary_mask(mask.astype(bool))
    assert encode_binary_mask(mask.astype(np.int64)) == encode_binary_mask(mask.astype(bool))


def test_non_contiguous_and_c_order_inputs_are_accepted():
    rng = np.random.default_rng(3)
    big = rng.random((40, 60)) < 0.4
    view = big[3::2, ::3]
    assert not view.flags.c_contiguous
    assert encode_binary_mask(view) == _reference_encode(np.ascontiguousarray(view))
    assert encode_binary_mask(np.asfortranarray(big)) == encode_binary_mask(big)


# --- the competition's empty-mask strings and sample submission ------------------------------


@pytest.mark.parametrize("size", sorted(EMPTY_STRINGS))
def test_empty_mask_strings_of_the_reference(size):
    expected = EMPTY_STRINGS[size]
    assert empty_mask_string(size, size) == expected
    assert encode_binary_mask(np.zeros((size, size), dtype=bool)) == expected
    assert not decode_binary_mask(expected, size, size).any()
    assert mask_counts(expected, size, size).tolist() == [size * size]


def test_sample_submission_rows_are_empty_masks(samples_dir):
    with open(samples_dir / "sample_submission.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 559
    sizes = set()
    for row in rows:
        height, width = int(row["ImageHeight"]), int(row["ImageWidth"])
        sizes.add((height, width))
        cls, confidence, text = row["PredictionString"].split(" ")
        assert (cls, confidence) == ("0", "1")
        assert text == empty_mask_string(height, width), row["ID"]
    assert sizes == {(2048, 2048), (1728, 1728), (3072, 3072)}
    for height, width in sizes:  # the encoder itself, not only the cached helper
        text = encode_binary_mask(np.zeros((height, width), dtype=bool))
        assert text == EMPTY_STRINGS[height]


# --- round trips ------------------------------------------------------------------------------


def _check_round_trip(mask: np.ndarray) -> None:
    text = encode_binary_mask(mask)
    assert text == _reference_encode(mask)
    decoded = decode_binary_mask(text, *mask.shape)
    assert decoded.dtype == np.bool_ and decoded.shape == mask.shape
    assert decoded.flags.c_contiguous
    assert np.array_equal(decoded, mask)
    # pycocotools' own decoder agrees with ours.
    reference = coco_mask.decode(to_coco_rle(text, *mask.shape)).astype(bool)
    assert np.array_equal(reference, mask)


@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (13, 7), (1, 17), (17, 1), (2, 2), (64, 33)])
@pytest.mark.parametrize("density", [0.0, 0.3, 0.97, 1.0])
def test_round_trip_random_masks(shape, density):
    rng = np.random.default_rng(shape[0] * 1000 + shape[1] + int(density * 100))
    _check_round_trip(rng.random(shape) < density)


def test_round_trip_large_mask():
    rng = np.random.default_rng(1728)
    mask = np.zeros((1728, 1728), dtype=bool)
    mask[100:900, 50:1700] = rng.random((800, 1650)) < 0.5
    mask[:, -1] = True  # last column set: the counts end with a run of ones
    _check_round_trip(mask)


def test_round_trip_mask_touching_every_border():
    mask = np.zeros((9, 14), dtype=bool)
    mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = True
    mask[4, 6] = True
    text = encode_binary_mask(mask)
    assert np.array_equal(decode_binary_mask(text, 9, 14), mask)
    counts = mask_counts(text, 9, 14)
    assert counts[0] == 0  # pixel (0, 0) is set
    assert counts.sum() == 9 * 14
    assert len(counts) % 2 == 0  # ends with a run of ones: the last pixel is set


def test_coco_rle_works_with_pycocotools_area_bbox_iou():
    mask = np.zeros((20, 30), dtype=bool)
    mask[2:7, 5:15] = True  # rows 2..6, cols 5..14: area 50, bbox x=5 y=2 w=10 h=5
    rle = to_coco_rle(encode_binary_mask(mask), 20, 30)
    assert coco_mask.area(rle) == 50
    assert coco_mask.toBbox(rle).tolist() == [5.0, 2.0, 10.0, 5.0]
    other = np.zeros_like(mask)
    other[2:7, 10:20] = True  # overlap 25, union 75
    iou = coco_mask.iou([rle], [to_coco_rle(encode_binary_mask(other), 20, 30)], [0])
    assert iou[0, 0] == pytest.approx(1 / 3)


def test_decode_accepts_bytes_and_surrounding_whitespace():
    text = EMPTY_STRINGS[2048]
    assert not decode_binary_mask(text.encode(), 2048, 2048).any()
    assert not decode_binary_mask(f" {text}\n", 2048, 2048).any()


# --- encode_label_image -----------------------------------------------------------------------


def test_label_image_literal():
    labels = np.array([[0, 2, 2], [0, 2, 0]], dtype=np.int32)
    assert encode_label_image(labels) == {2: _text(b"231")}


def test_label_image_literal_two_cells_and_full_column():
    # Cell 1 fills column 0 and the top of column 1; cell 4 is a single pixel at the end.
    labels = np.array([[1, 1, 0], [1, 0, 4]], dtype=np.int32)
    encoded = encode_label_image(labels)
    assert list(encoded) == [1, 4]
    assert mask_counts(encoded[1], 2, 3).tolist() == [0, 3, 3]
    assert mask_counts(encoded[4], 2, 3).tolist() == [5, 1]


def test_label_image_without_cells_is_empty_dict():
    assert encode_label_image(np.zeros((5, 4), dtype=np.int32)) == {}


def test_label_image_single_cell_everywhere():
    labels = np.full((6, 5), 7, dtype=np.int32)
    assert encode_label_image(labels) == {7: encode_binary_mask(np.ones((6, 5), dtype=bool))}


def _random_label_image(rng: np.random.Generator, shape: tuple[int, int], n: int) -> np.ndarray:
    """Rectangles and disks with ids from a gapped set, later ones painted over earlier ones;
    some ids are used twice (non-contiguous cells), some shapes touch or cross the borders."""
    height, width = shape
    labels = np.zeros(shape, dtype=np.int32)
    ids = rng.choice(np.arange(1, 4 * n + 1), size=n, replace=False)
    rows, cols = np.mgrid[:height, :width]
    for k in range(n):
        cell = int(ids[k]) if k % 7 else int(ids[max(k - 3, 0)])  # some ids reused
        r, c = rng.integers(-3, height + 3), rng.integers(-3, width + 3)
        if k % 2:
            radius = rng.integers(1, max(2, min(height, width) // 3))
            labels[(rows - r) ** 2 + (cols - c) ** 2 <= radius**2] = cell
        else:
            dr, dc = rng.integers(1, height + 1), rng.integers(1, width + 1)
            labels[max(r, 0) : r + dr, max(c, 0) : c + dc] = cell
    return labels


@pytest.mark.parametrize(
    "shape", [(1, 1), (1, 23), (23, 1), (7, 13), (40, 40), (64, 97), (131, 29)]
)
def test_label_image_equals_per_cell_encoding_random(shape):
    rng = np.random.default_rng(sum(shape))
    for trial in range(6):
        labels = _random_label_image(rng, shape, n=2 + 10 * trial)
        assert encode_label_image(labels) == _per_cell(labels), (shape, trial)


def test_label_image_full_height_cells_continue_across_columns():
    # Runs that reach the bottom of a column continue at the top of the next one.
    labels = np.zeros((5, 6), dtype=np.int32)
    labels[:, 1:3] = 3  # two full columns: one run of 10
    labels[3:, 3] = 2
    labels[:2, 4] = 2  # cell 2: bottom of column 3 joined to the top of column 4
    labels[:, 5] = 3  # cell 3 again, a separate piece
    encoded = encode_label_image(labels)
    assert mask_counts(encoded[3], 5, 6).tolist() == [5, 10, 10, 5]
    assert mask_counts(encoded[2], 5, 6).tolist() == [18, 4, 8]
    assert encoded == _per_cell(labels)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.int64, np.uint64])
def test_label_image_any_integer_dtype(dtype):
    rng = np.random.default_rng(11)
    labels = _random_label_image(rng, (30, 45), n=12) % 200
    encoded = encode_label_image(labels.astype(dtype))
    assert encoded == _per_cell(labels)
    assert all(type(key) is int for key in encoded)
    assert list(encoded) == sorted(encoded)


def test_label_image_many_cells_with_skipped_ids():
    # 400 small cells on a grid, ids 5, 10, ... (gaps), every cell touching its neighbours.
    labels = (np.arange(20 * 20).reshape(20, 20) * 5 + 5).astype(np.int32)
    labels = np.kron(labels, np.ones((3, 2), dtype=np.int32))
    labels[0, 0] = 0
    encoded = encode_label_image(labels)
    assert len(encoded) == 400
    assert list(encoded) == sorted(encoded)
    assert encoded == _per_cell(labels)


def test_label_image_real_masks(samples_dir, sample_ids):
    from hpa_kit.io import read_label_image

    expected_cells = dict(zip(sample_ids, (19, 18, 10, 10), strict=True))
    for image_id in sample_ids:
        labels = read_label_image(samples_dir / "masks" / f"{image_id}_predictedmask.png")
        encoded = encode_label_image(labels)
        assert len(encoded) == expected_cells[image_id]
        assert encoded == _per_cell(labels), image_id
        for cell, text in list(encoded.items())[:3]:
            assert np.array_equal(decode_binary_mask(text, *labels.shape), labels == cell)


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mask, message",
    [
        (np.zeros((2, 3, 1), dtype=bool), "2-D"),
        (np.zeros(5, dtype=bool), "2-D"),
        (np.zeros((0, 3), dtype=bool), "empty"),
        (np.zeros((2, 2), dtype=np.float32), "dtype float32"),
        (np.array([[0, 2]], dtype=np.uint8), "only 0 and 1"),
        (np.array([[0, -1]], dtype=np.int32), "only 0 and 1"),
    ],
)
def test_encode_binary_mask_rejects_bad_input(mask, message):
    with pytest.raises(RLEError, match=message):
        encode_binary_mask(mask)


@pytest.mark.parametrize(
    "labels, message",
    [
        (np.zeros((2, 3, 1), dtype=np.int32), "2-D"),
        (np.zeros(4, dtype=np.int32), "2-D"),
        (np.zeros((3, 0), dtype=np.int32), "empty"),
        (np.ones((2, 2), dtype=np.float64), "integer dtype"),
        (np.ones((2, 2), dtype=bool), "integer dtype"),
        (np.array([[0, -3], [1, 2]], dtype=np.int32), "negative"),
    ],
)
def test_encode_label_image_rejects_bad_input(labels, message):
    with pytest.raises(RLEError, match=message):
        encode_label_image(labels)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty"),
        ("not base64!", "base64"),
        (base64.b64encode(b"plain bytes").decode(), "zlib"),
        (_text(b"\x7f"), "bad character"),
        (_text(b"X"), "truncated"),
        (_text(b"o" * 11 + b"0"), "longer than 11 characters"),
        (_text(b"2" + b"O"), "negative run"),
        ("é", "ASCII"),
    ],
)
def test_decode_rejects_bad_text(text, message):
    with pytest.raises(RLEError, match=message):
        decode_binary_mask(text, 1, 3)


def test_zero_length_runs_decode():
    # Not produced by the encoder, but well defined: 2 zeros, 0 ones, 1 zero, then 1 one.
    text = _text(b"2011")
    assert mask_counts(text, 1, 4).tolist() == [2, 0, 1, 1]
    assert decode_binary_mask(text, 1, 4).tolist() == [[False, False, False, True]]
    reference = coco_mask.decode(to_coco_rle(text, 1, 4)).astype(bool)
    assert reference.tolist() == [[False, False, False, True]]


def test_mask_counts_returns_a_fresh_array():
    text = EMPTY_STRINGS[1728]
    first = mask_counts(text, 1728, 1728)
    first[0] = 5
    assert mask_counts(text, 1728, 1728).tolist() == [1728 * 1728]
    assert not decode_binary_mask(text, 1728, 1728).any()


def test_decode_rejects_wrong_size():
    with pytest.raises(RLEError, match="covers 4194304 pixels, expected"):
        decode_binary_mask(EMPTY_STRINGS[2048], 2048, 2047)
    with pytest.raises(RLEError, match="covers 4194304 pixels"):
        to_coco_rle(EMPTY_STRINGS[2048], 1728, 1728)


@pytest.mark.parametrize("height, width", [(0, 5), (5, -1), (2.0, 3), (True, 3), ("2", 3)])
def test_bad_sizes_are_rejected(height, width):
    with pytest.raises(RLEError):
        decode_binary_mask(EMPTY_STRINGS[2048], height, width)
    with pytest.raises(RLEError):
        empty_mask_string(height, width)


def test_import_does_not_load_pycocotools():
    # Only this module's own imports are checked.
    code = (
        "import sys, hpa_kit; before = 'pycocotools' in sys.modules; import hpa_kit.rle; "
        "assert before or 'pycocotools' not in sys.modules, 'eager import'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_upstream_pycocotools_rejects_c_order():
    # REFERENCE.md section 6: the reason encode_binary_mask converts to Fortran order itself.
    with pytest.raises(Exception, match="Fortran"):
        coco_mask.encode(np.zeros((4, 5, 1), dtype=np.uint8, order="C"))


# --- hostile text: bounded work and memory ----------------------------------------------------


def _counts_string(counts: list[int]) -> bytes:
    """pycocotools' step 3, written out independently (the test's oracle for crafted text)."""
    out = bytearray()
    for i, count in enumerate(counts):
        x = count - counts[i - 2] if i > 2 else count
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            out.append(c + 48 + (0x20 if more else 0))
    return bytes(out)


def test_counts_string_oracle_matches_pycocotools():
    mask = np.zeros((7, 9), dtype=bool)
    mask[1:5, 2:7] = True
    mask[6, 8] = True
    counts = mask_counts(encode_binary_mask(mask), 7, 9).tolist()
    assert _text(_counts_string(counts)) == encode_binary_mask(mask)


def test_max_counts_bytes_bounds_every_real_mask():
    rng = np.random.default_rng(5)
    for shape in [(1, 1), (3, 5), (64, 33), (17, 200)]:
        checker = np.indices(shape).sum(axis=0) % 2 == 1
        for mask in (checker, ~checker, rng.random(shape) < 0.5, np.ones(shape, dtype=bool)):
            counts = to_coco_rle(encode_binary_mask(mask), *shape)["counts"]
            assert len(counts) <= max_counts_bytes(*shape)


def test_zlib_bomb_is_refused_at_the_size_limit():
    bomb = _text(b"0" * 20_000_000)  # ~20 KB of text expanding to 20 MB of counts
    assert len(bomb) < 40_000
    with pytest.raises(RLEError, match="decompresses to more than 20016 bytes"):
        decode_binary_mask(bomb, 100, 100)


def test_more_runs_than_pixels_are_refused():
    # 30 zero-length runs fit the byte limit of a 1 x 20 mask (56) but not its run limit (21).
    with pytest.raises(RLEError, match="holds 30 runs, more than pixels"):
        to_coco_rle(_text(b"0" * 30), 1, 20)


def test_runs_beyond_32_bits_are_refused():
    with pytest.raises(RLEError, match="beyond 32-bit run lengths"):
        mask_counts(_text(_counts_string([2**40])), 1, 1)


def test_a_run_longer_than_the_mask_names_the_pixels_covered():
    with pytest.raises(RLEError, match="covers 4194304 pixels, expected height\\*width = 4\\*4"):
        mask_counts(EMPTY_STRINGS[2048], 4, 4)


def test_truncated_zlib_stream_is_refused():
    data = zlib.compress(b"4", 9)[:-3]
    with pytest.raises(RLEError, match="truncated stream"):
        decode_binary_mask(base64.b64encode(data).decode(), 2, 2)


def test_mask_area():
    mask = np.zeros((5, 3), dtype=bool)
    mask[1:4, 1] = True
    assert mask_area(encode_binary_mask(mask), 5, 3) == 3
    assert mask_area(EMPTY_STRINGS[1728], 1728, 1728) == 0


def test_decoded_cache_is_bounded_by_bytes():
    _, _, budget = decoded_cache_info()
    rows, cols = np.indices((512, 512))
    for k in range(45):  # 45 distinct striped masks, ~1 MB each once decoded: > the budget
        mask = (rows * (1 + k % 6) + cols * (1 + k // 6) + k) % 17 < 8
        mask_counts(encode_binary_mask(mask), 512, 512)
        assert decoded_cache_info()[1] <= budget
    assert decoded_cache_info()[0] < 45  # the oldest were dropped
    big = np.indices((1024, 1024)).sum(axis=0) % 2 == 0  # > budget / 4 once decoded: not kept
    before = decoded_cache_info()
    assert decode_binary_mask(encode_binary_mask(big), 1024, 1024).sum() == 1024 * 512
    assert decoded_cache_info()[1] <= before[1]


def test_sizes_beyond_32_bit_runs_are_refused():
    with pytest.raises(RLEError, match="more than 2147483647 pixels"):
        empty_mask_string(65536, 65536)


def test_size_checks_come_before_the_cache():
    # (2.0, 3) hashes like (2, 3): a cache in front of the check would return the cached text.
    assert empty_mask_string(2, 3) == encode_binary_mask(np.zeros((2, 3), dtype=bool))
    with pytest.raises(RLEError, match="height must be an int"):
        empty_mask_string(2.0, 3)
    with pytest.raises(RLEError, match="width must be an int"):
        empty_mask_string(2, True)

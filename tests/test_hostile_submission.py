"""Hostile input to the submission readers, the mask decoder and the metric.

Property tests (hypothesis, seeded by its database-less profile below) check that no input
makes the parsers or decoders raise anything but their named errors, and that encoding
round-trips on non-square masks; a subprocess test checks the peak memory of ``validate`` on
a zlib bomb (see benchmarks/bench_hostile.py for the full-size cases).
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import zlib

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from hpa_kit.labels import LabelError, parse_label_list
from hpa_kit.metric import score_submission
from hpa_kit.rle import (
    RLEError,
    decode_binary_mask,
    empty_mask_string,
    encode_binary_mask,
    encode_label_image,
    mask_area,
    mask_counts,
)
from hpa_kit.submission import (
    SubmissionError,
    format_prediction_string,
    parse_prediction_string,
    read_sample,
    validate_submission,
)

FAST = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

HEADER = "ID,ImageWidth,ImageHeight,PredictionString"
M = encode_binary_mask(np.array([[1, 0, 0], [1, 1, 0]], dtype=bool))  # 2 x 3
E = empty_mask_string(2, 3)


def _zlib_text(data: bytes) -> str:
    return base64.b64encode(zlib.compress(data, 9)).decode("ascii")


# --------------------------------------------------------------------------- masks


@FAST
@given(arrays(np.bool_, st.tuples(st.integers(1, 23), st.integers(1, 31))))
def test_mask_round_trip_on_any_shape(mask: np.ndarray) -> None:
    text = encode_binary_mask(mask)
    assert np.array_equal(decode_binary_mask(text, *mask.shape), mask)
    assert mask_area(text, *mask.shape) == int(mask.sum())
    counts = mask_counts(text, *mask.shape)
    assert counts.sum() == mask.size and (counts[1:] > 0).all()


@FAST
@given(
    arrays(np.uint8, st.tuples(st.integers(1, 17), st.integers(1, 29)), elements=st.integers(0, 4))
)
def test_label_image_round_trip_on_any_shape(labels: np.ndarray) -> None:
    cells = encode_label_image(labels)
    assert sorted(cells) == sorted(int(i) for i in np.unique(labels) if i)
    for cell, text in cells.items():
        assert np.array_equal(decode_binary_mask(text, *labels.shape), labels == cell)


@FAST
@given(
    st.one_of(st.text(max_size=60), st.binary(max_size=60)), st.integers(1, 9), st.integers(1, 9)
)
def test_decoder_raises_only_rle_error_on_any_text(text, height: int, width: int) -> None:
    try:
        decoded = decode_binary_mask(text, height, width)
    except RLEError:
        return
    assert decoded.shape == (height, width)


@FAST
@given(st.binary(max_size=80), st.integers(1, 9), st.integers(1, 9))
def test_decoder_raises_only_rle_error_on_any_counts_bytes(data: bytes, height, width) -> None:
    # Valid base64 and zlib around arbitrary bytes: the counts parser itself is exercised.
    text = _zlib_text(data)
    try:
        decoded = decode_binary_mask(text, height, width)
    except RLEError:
        return
    assert decoded.shape == (height, width)
    assert int(decoded.sum()) == mask_area(text, height, width)


# --------------------------------------------------------------------------- strings

_TOKENS = st.one_of(
    st.sampled_from(["0", "18", "19", "+1", "1_0", "\u0661", "-0", "0.5", "1e-3", "nan", "inf"]),
    st.sampled_from([M, E, "a!b", "==", "x" * 30]),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=8),
)


@FAST
@given(st.lists(_TOKENS, max_size=12), st.sampled_from([" ", "  ", "\t", "\n", "\u00a0"]))
def test_parser_raises_only_submission_error(tokens: list[str], separator: str) -> None:
    text = separator.join(tokens)
    try:
        triplets = parse_prediction_string(text)
    except SubmissionError:
        return
    for cls, conf, mask in triplets:  # anything accepted follows the rules
        assert type(cls) is int and 0 <= cls <= 18
        assert 0.0 <= conf <= 1.0
        assert mask.isascii() and mask.isprintable() and " " not in mask


@FAST
@given(
    st.lists(
        st.tuples(
            st.integers(0, 18),
            st.floats(0.0, 1.0, allow_nan=False),
            st.sampled_from([M, E]),
        ),
        max_size=10,
    )
)
def test_format_then_parse_round_trips(triplets) -> None:
    parsed = parse_prediction_string(format_prediction_string(triplets))
    assert [(c, m) for c, _, m in parsed] == [(c, m) for c, _, m in triplets]
    for (_, written, _), (_, read, _) in zip(triplets, parsed, strict=True):
        assert read == pytest.approx(written, rel=5e-6, abs=1e-300)


# --------------------------------------------------------------------------- tables

_CSV_TEXT = st.lists(
    st.sampled_from(list('ab,"\n\r 0123456789.\x00') + ["2,3,", M, E, "0 1 "]), max_size=40
).map("".join)


def _sample() -> pd.DataFrame:
    return pd.DataFrame({"ID": ["a", "b"], "ImageWidth": [3, 3], "ImageHeight": [2, 2]})


@FAST
@given(st.one_of(st.binary(max_size=120), _CSV_TEXT.map(lambda t: (HEADER + "\n" + t).encode())))
def test_validate_raises_only_submission_error_on_any_file(tmp_path_factory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("csv") / "sub.csv"
    path.write_bytes(data)
    try:
        report = validate_submission(path, _sample())
    except SubmissionError:
        return
    assert report.n_expected == 2
    json.dumps(report.to_dict())


@FAST
@given(_CSV_TEXT.map(lambda t: HEADER + "\n" + t))
def test_score_raises_only_submission_error_on_any_file(tmp_path_factory, text: str) -> None:
    path = tmp_path_factory.mktemp("csv") / "sub.csv"
    path.write_text(text)
    truth = _sample().assign(PredictionString=f"0 1 {M}")
    try:
        score_submission(path, truth)
    except SubmissionError:
        return


@FAST
@given(st.text(max_size=12))
def test_sample_ids_are_safe_or_refused(image_id: str) -> None:
    frame = pd.DataFrame({"ID": [image_id], "ImageWidth": [3], "ImageHeight": [2]})
    try:
        sample = read_sample(frame)
    except SubmissionError as exc:
        assert "row 0" in str(exc)
        return
    accepted = sample["ID"].iloc[0]
    assert accepted.isascii() and accepted.isprintable() and accepted == accepted.strip()
    assert not any(ch in accepted for ch in ",\"'/\\ ") and ".." not in accepted


# --------------------------------------------------------------------------- memory


def test_validate_of_a_zlib_bomb_stays_small(tmp_path) -> None:
    # A 40 KB mask token that inflates to 30 MB of counts. Before the decoding limit,
    # `validate` expanded it fully (int64 arrays of every character: ~1.5 GB peak; 3 GB for
    # a 60 MB bomb, measured); now it stops at max_counts_bytes (8.4 MB at 2048 x 2048).
    token = _zlib_text(b"0" * 30_000_000)
    assert len(token) < 50_000
    (tmp_path / "bomb.csv").write_text(f"{HEADER}\nimg,2048,2048,0 0.5 {token}\n")
    (tmp_path / "sample.csv").write_text("ID,ImageWidth,ImageHeight\nimg,2048,2048\n")
    wrapper = (
        "import json, resource, subprocess, sys\n"
        "done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
        "print(json.dumps({'rc': done.returncode, 'peak_mb': peak, 'out': done.stdout}))\n"
    )
    command = [sys.executable, "-m", "hpa_kit", "validate", "bomb.csv", "--sample", "sample.csv"]
    done = subprocess.run(
        [sys.executable, "-c", wrapper, *command],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(done.stdout)
    assert result["rc"] == 1
    assert "decompresses to more than 8388624 bytes" in result["out"]
    assert result["peak_mb"] < 300, result


@FAST
@given(
    st.lists(
        st.sampled_from(["0", "18", "19", "01", "\u0661", "\u00b2", "+1", " 7 ", "x"]),
        min_size=1,
        max_size=5,
    )
)
def test_label_strings_raise_only_label_error(parts: list[str]) -> None:
    # "\u00b2".isdigit() is True but int("\u00b2") fails: a plain ValueError before.
    text = "|".join(parts)
    try:
        classes = parse_label_list(text)
    except LabelError:
        return
    assert all(0 <= c <= 18 for c in classes)
    assert all(p.strip() in {str(c) for c in range(19)} for p in parts)

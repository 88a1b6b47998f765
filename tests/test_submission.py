"""hpa_kit.submission: PredictionStrings, write_submission, validate_submission, CLI."""

from __future__ import annotations

import gzip
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hpa_kit.cli import main
from hpa_kit.rle import empty_mask_string, encode_binary_mask
from hpa_kit.submission import (
    FILE_KEY,
    SubmissionError,
    cells_prediction_string,
    check_image_id,
    format_confidence,
    format_prediction_string,
    parse_prediction_string,
    placeholder_prediction_string,
    read_sample,
    read_submission,
    validate_submission,
    write_submission,
)

# A 3 x 4 image (height 3, width 4) with two cells.
M1 = encode_binary_mask(np.array([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=bool))
M2 = encode_binary_mask(np.array([[0, 0, 0, 1], [0, 0, 1, 1], [0, 0, 0, 1]], dtype=bool))
E34 = empty_mask_string(3, 4)


def _sample() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "ID": ["a", "b", "c", "d"],
            "ImageWidth": [4, 4, 4, 6],
            "ImageHeight": [3, 3, 3, 5],
            "PredictionString": [f"0 1 {E34}"] * 3 + [f"0 1 {empty_mask_string(5, 6)}"],
        }
    )


# --------------------------------------------------------------------------- strings


def test_format_confidence_literal() -> None:
    cases = [
        (0.0, "0"),
        (-0.0, "0"),
        (1.0, "1"),
        (0.5, "0.5"),
        (0.25, "0.25"),
        (0.123456789, "0.123457"),
        (0.9999999, "1"),
        (0.0001, "0.0001"),
        (0.00012345678, "0.000123457"),
        (0.000099999999, "0.0001"),
        (1.5e-7, "0.00000015"),
        (np.float32(0.75), "0.75"),
    ]
    for value, text in cases:
        assert format_confidence(value) == text, value
    for bad in (1.5, -0.1, math.nan, math.inf):
        with pytest.raises(SubmissionError):
            format_confidence(bad)


def test_confidence_text_round_trips_to_six_digits() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.random(2000), 10.0 ** rng.uniform(-12, 0, 2000)])
    for v in values:
        text = format_confidence(v)
        assert "e" not in text and "E" not in text
        assert float(text) == pytest.approx(v, rel=5e-6, abs=0)
        digits = text.replace("0.", "", 1).lstrip("0").replace(".", "")
        assert len(digits) <= 6


def test_prediction_string_round_trip() -> None:
    triplets = [(0, 0.5, M1), (16, 1.0, M1), (3, 0.000123, M2), (18, 0.0, M2)]
    text = format_prediction_string(triplets)
    assert text == f"0 0.5 {M1} 16 1 {M1} 3 0.000123 {M2} 18 0 {M2}"
    assert parse_prediction_string(text) == triplets
    assert parse_prediction_string("  " + text.replace(" ", "   ") + "\n") == triplets
    assert format_prediction_string([]) == ""
    assert parse_prediction_string("") == [] == parse_prediction_string(" ")
    assert parse_prediction_string(None) == [] == parse_prediction_string(float("nan"))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("0 1", "2 tokens"),
        (f"0 1 {M1} 2", "4 tokens"),
        (f"x 1 {M1}", "class 'x'"),
        (f"1.0 1 {M1}", "class '1.0'"),
        (f"0 high {M1}", "confidence 'high'"),
    ],
)
def test_parse_prediction_string_rejects_malformed(text: str, match: str) -> None:
    with pytest.raises(SubmissionError, match=match):
        parse_prediction_string(text)


@pytest.mark.parametrize(
    "triplet",
    [(19, 0.5, "m"), (-1, 0.5, "m"), (1.0, 0.5, "m"), (True, 0.5, "m"), (0, 1.5, "m"),
     (0, float("nan"), "m"), (0, 0.5, ""), (0, 0.5, "a b")],
)  # fmt: skip
def test_format_prediction_string_rejects_bad_values(triplet) -> None:
    with pytest.raises(SubmissionError):
        format_prediction_string([triplet])


def test_placeholder_matches_sample_rows() -> None:
    assert placeholder_prediction_string(2048, 2048) == "0 1 eNoLCAgIMAEABJkBdQ=="
    assert placeholder_prediction_string(1728, 1728) == "0 1 eNoLCAjJNgIABNkBkg=="
    assert placeholder_prediction_string(3072, 3072) == "0 1 eNoLCAgIsAQABJ4Beg=="


def test_cells_prediction_string_order_and_floor() -> None:
    probs = {
        2: np.eye(19)[18] * 0.5,  # only class 18
        1: np.r_[0.9, 0.05, np.zeros(15), 0.3, 0.0],  # classes 0, 1, 17
    }
    masks = {2: M2, 1: M1}
    assert cells_prediction_string(masks, probs, floor=0.05) == (
        f"0 0.9 {M1} 1 0.05 {M1} 17 0.3 {M1} 18 0.5 {M2}"
    )
    everything = parse_prediction_string(cells_prediction_string(masks, probs))
    assert len(everything) == 2 * 19
    assert [t[0] for t in everything[:19]] == list(range(19))
    assert cells_prediction_string(masks, probs, floor=0.95) == ""
    assert cells_prediction_string({}, {}) == ""
    with pytest.raises(SubmissionError, match="same cell ids"):
        cells_prediction_string({1: M1}, {2: np.zeros(19)})
    with pytest.raises(SubmissionError, match="19 class probabilities"):
        cells_prediction_string({1: M1}, {1: [0.5, 0.5]})


# --------------------------------------------------------------------------- tables


def test_read_sample_checks(tmp_path) -> None:
    sample = read_sample(_sample())
    assert list(sample.columns) == ["ID", "ImageWidth", "ImageHeight"]
    assert sample["ImageWidth"].tolist() == [4, 4, 4, 6]
    bad = _sample().drop(columns="ImageHeight")
    with pytest.raises(SubmissionError, match="ImageHeight"):
        read_sample(bad)
    with pytest.raises(SubmissionError, match="repeated"):
        read_sample(pd.concat([_sample(), _sample().iloc[:1]]))
    with pytest.raises(SubmissionError, match="positive integer.*'b'"):
        read_sample(_sample().assign(ImageWidth=["4", "0", "4", "6"]))
    with pytest.raises(SubmissionError, match="not found"):
        read_sample(tmp_path / "missing.csv")
    with pytest.raises(SubmissionError, match="PredictionString"):
        read_submission(_sample().drop(columns="PredictionString"))


# --------------------------------------------------------------------------- writing


def test_write_submission_placeholders_and_report(tmp_path) -> None:
    predictions = {
        "a": f"0 0.9 {M1} 5 0.25 {M2}",
        "b": "",  # no cells
        "c": "0 0.9",  # malformed
        "zz": f"0 0.5 {M1}",  # not in the sample
    }
    out = tmp_path / "sub" / "submission.csv"
    report = write_submission(out, predictions, _sample(), failures={"d": "segmentation crashed"})
    assert report.path == out and report.n_rows == 4 and report.n_predicted == 1
    assert report.placeholders == {
        "b": "no cells",
        "c": "invalid: PredictionString has 2 tokens, not a multiple of 3 (class confidence mask)",
        "d": "failed: segmentation crashed",
    }
    assert report.extra == ("zz",)
    assert "placeholder d: failed: segmentation crashed" in report.summary()
    lines = out.read_text().splitlines()
    assert lines == [
        "ID,ImageWidth,ImageHeight,PredictionString",
        f"a,4,3,0 0.9 {M1} 5 0.25 {M2}",
        f"b,4,3,0 1 {E34}",
        f"c,4,3,0 1 {E34}",
        f"d,6,5,0 1 {empty_mask_string(5, 6)}",
    ]
    assert [p.name for p in out.parent.iterdir()] == ["submission.csv"]  # no temp left
    assert validate_submission(out, _sample()).ok


def test_write_submission_missing_id_and_sample_path(tmp_path) -> None:
    _sample().to_csv(tmp_path / "sample.csv", index=False)
    report = write_submission(tmp_path / "s.csv", {"b": f"3 1 {M2}"}, tmp_path / "sample.csv")
    assert report.placeholders == {
        "a": "missing: no prediction",
        "c": "missing: no prediction",
        "d": "missing: no prediction",
    }
    written = read_submission(tmp_path / "s.csv")
    assert written["ID"].tolist() == ["a", "b", "c", "d"]
    assert written["PredictionString"].tolist()[1] == f"3 1 {M2}"


def test_write_submission_is_atomic(tmp_path, monkeypatch) -> None:
    out = tmp_path / "submission.csv"
    out.write_text("old contents\n")

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_submission(out, {}, _sample())
    assert out.read_text() == "old contents\n"
    assert [p.name for p in tmp_path.iterdir()] == ["submission.csv"]


def test_write_submission_has_the_usual_file_mode(tmp_path) -> None:
    old = os.umask(0o022)
    try:
        report = write_submission(tmp_path / "s.csv", {}, _sample())
    finally:
        os.umask(old)
    assert (report.path.stat().st_mode & 0o777) == 0o644  # not mkstemp's 0600


def test_write_submission_rejects_ids_that_break_csv(tmp_path) -> None:
    sample = _sample().assign(ID=["a", "b,c", "d", "e"])
    with pytest.raises(SubmissionError, match="comma"):
        write_submission(tmp_path / "s.csv", {}, sample)
    assert not (tmp_path / "s.csv").exists()


# --------------------------------------------------------------------------- validation


def _good() -> pd.DataFrame:
    df = _sample()
    df.loc[0, "PredictionString"] = f"0 0.9 {M1} 16 0.5 {M1} 2 0.125 {M2}"
    return df


def test_validate_good_submission(tmp_path) -> None:
    report = validate_submission(_good(), _sample())
    assert report.ok and report.problems == {}
    assert report.n_masks_checked == 2 + 1 + 1 + 1  # distinct masks per row
    assert report.summary().startswith("OK: 4 rows")
    _good().to_csv(tmp_path / "sub.csv", index=False)
    assert validate_submission(tmp_path / "sub.csv", _sample()).ok


def _problems(df: pd.DataFrame) -> dict[str, list[str]]:
    report = validate_submission(df, _sample())
    assert not report.ok
    return report.problems


def test_validate_missing_extra_duplicate_ids() -> None:
    df = _good()
    assert _problems(df.iloc[1:]) == {"a": ["missing: id of the sample has no row"]}
    extra = pd.concat([df, df.iloc[[1]].assign(ID="x")])
    assert _problems(extra) == {"x": ["extra: id is not in the sample"]}
    dup = pd.concat([df, df.iloc[[2]]])
    assert _problems(dup) == {"c": ["row 4: repeated ID (first at row 2)"]}


def test_validate_sizes() -> None:
    df = _good().astype({"ImageHeight": object})
    df.loc[1, "ImageWidth"] = 5
    df.loc[2, "ImageHeight"] = "three"
    problems = _problems(df)
    # Masks are checked at the sample's size (3 x 4), where they are fine.
    assert problems["b"] == ["ImageWidth 5, expected 4"]
    assert problems["c"] == ["ImageHeight 'three' is not a positive integer written plainly"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"19 0.5 {M1}", "triplet 0: class 19 out of range 0..18"),
        (f"0 0.5 {M1} -1 0.5 {M1}", "triplet 1: class -1 out of range 0..18"),
        (f"a 0.5 {M1}", "triplet 0: class 'a' is not one of 0..18 written plainly"),
        (f"0 1.5 {M1}", "triplet 0: confidence 1.5 out of range [0, 1]"),
        (f"0 -0.5 {M1}", "triplet 0: confidence -0.5 out of range [0, 1]"),
        (f"0 nan {M1}", "triplet 0: confidence 'nan' is not a plain decimal number"),
        (f"0 inf {M1}", "triplet 0: confidence 'inf' is not a plain decimal number"),
        (f"0 1e400 {M1}", "triplet 0: confidence 1e400 is not finite"),
        (f"0 x {M1}", "triplet 0: confidence 'x' is not a plain decimal number"),
        (f"0 0.5 {M1} 1", "PredictionString has 4 tokens, not a multiple of 3"),
        ("", "empty PredictionString"),
        ("0 0.5 notbase64!", "mask 'notbase64!'"),
        ("0 0.5 aGVsbG8=", "not zlib"),  # base64 of b"hello"
        (f"0 0.5 {empty_mask_string(4, 4)}", "covers 16 pixels, expected height*width = 3*4"),
    ],
)
def test_validate_catches_each_prediction_problem(text: str, message: str) -> None:
    df = _good()
    df.loc[1, "PredictionString"] = text
    problems = _problems(df)
    assert list(problems) == ["b"]
    assert len(problems["b"]) == 1
    assert message in problems["b"][0]


def test_validate_decodes_each_distinct_mask_once(monkeypatch) -> None:
    import hpa_kit.submission as submission

    calls: list[str] = []
    real = submission.mask_area

    def counting(text, height, width):
        calls.append(text)
        return real(text, height, width)

    monkeypatch.setattr(submission, "mask_area", counting)
    df = _good()
    df.loc[1, "PredictionString"] = " ".join(f"{c} 0.5 {M2}" for c in range(19))
    assert validate_submission(df, _sample()).ok
    assert sorted(calls) == sorted([M1, M2, M2, E34, empty_mask_string(5, 6)])


def test_validate_dataframe_nan_string_and_float_sizes() -> None:
    df = _good().astype({"ImageWidth": float})
    assert validate_submission(df, _sample()).ok  # 4.0 is the integer size 4
    df.loc[1, "PredictionString"] = float("nan")  # an empty cell read by pandas
    assert validate_submission(df, _sample()).problems == {
        "b": ["empty PredictionString (write the placeholder '0 1 <empty mask>')"]
    }


def test_validate_missing_column_and_caps_messages() -> None:
    report = validate_submission(_good().drop(columns="ImageWidth"), _sample())
    assert list(report.problems) == [FILE_KEY]
    assert "ImageWidth" in report.problems[FILE_KEY][0]
    df = _good()
    df.loc[1, "PredictionString"] = " ".join(f"{19 + c} 0.5 {M2}" for c in range(30))
    messages = validate_submission(df, _sample()).problems["b"]
    assert len(messages) == 11 and messages[-1] == "(more problems not shown)"


# --------------------------------------------------------------------------- CLI


def test_cli_validate(tmp_path, capsys) -> None:
    _sample().to_csv(tmp_path / "sample.csv", index=False)
    _good().to_csv(tmp_path / "good.csv", index=False)
    bad = _good()
    bad.loc[3, "PredictionString"] = f"0 1.5 {M1} 0 0.5 {M1}"
    bad.iloc[1:].to_csv(tmp_path / "bad.csv", index=False)
    sample = ["--sample", str(tmp_path / "sample.csv")]

    assert main(["validate", str(tmp_path / "good.csv"), *sample]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("OK:") and len(out) == 2
    assert out[1].startswith("warning: 3 of 4 rows carry no cell prediction")

    assert main(["validate", str(tmp_path / "bad.csv"), *sample]) == 1
    out = capsys.readouterr().out
    assert out.startswith("INVALID: 3 problem(s) in 2 id(s)")
    assert "  a: missing: id of the sample has no row" in out
    assert "  d: triplet 0: confidence 1.5 out of range [0, 1]" in out
    assert "covers 12 pixels" in out  # the 3 x 4 mask in a 5 x 6 image

    assert main(["validate", str(tmp_path / "nope.csv"), *sample]) == 2
    assert "not found" in capsys.readouterr().err


# --------------------------------------------------------------------------- real sample


def test_real_sample_submission_validates_against_itself(samples_dir, capsys) -> None:
    path = samples_dir / "sample_submission.csv"
    report = validate_submission(path, path)
    assert report.ok, report.summary()
    assert report.n_rows == report.n_expected == 559
    assert report.n_masks_checked == 559
    assert main(["validate", str(path), "--sample", str(path)]) == 0
    assert capsys.readouterr().out.startswith("OK: 559 rows")


# --------------------------------------------------------------------------- strict format


def _csv(tmp_path, name: str, lines: list[str]) -> str:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


SAMPLE_LINES = ["ID,ImageWidth,ImageHeight", "a,4,3", "b,4,3", "c,4,3"]
HEADER = "ID,ImageWidth,ImageHeight,PredictionString"


@pytest.mark.parametrize("token", ["1_0", "+1", "\u0661", "01", "-0", "1.0", "00", "\uff11", "1e1"])
def test_class_tokens_must_be_written_plainly(token: str) -> None:
    # int() accepts all of these but "1.0" and "1e1"; the format allows only 0..18 as written.
    with pytest.raises(SubmissionError, match="class .* is not one of 0..18 written plainly"):
        parse_prediction_string(f"0 1 {M1} {token} 0.5 {M1}")
    df = _good()
    df.loc[1, "PredictionString"] = f"{token} 0.5 {M1}"
    assert "is not one of 0..18 written plainly" in _problems(df)["b"][0]


@pytest.mark.parametrize("token", ["19", "-1", "123456789012345678901234567890" * 200])
def test_plain_integer_classes_out_of_range(token: str) -> None:
    with pytest.raises(SubmissionError, match="out of range 0..18"):
        parse_prediction_string(f"{token} 0.5 {M1}")


@pytest.mark.parametrize(
    "token",
    ["0_5", "nan", "NaN", "inf", "-inf", "\u0660.5", "0.5\u0665", "0x1", "0.5.1", "1e", "."],
)
def test_confidence_tokens_must_be_plain_decimals(token: str) -> None:
    with pytest.raises(SubmissionError, match="is not a plain decimal number"):
        parse_prediction_string(f"0 {token} {M1}")


@pytest.mark.parametrize(
    ("token", "value"), [(".5", 0.5), ("1.", 1.0), ("5e-1", 0.5), ("1E-3", 0.001), ("+0.25", 0.25)]
)
def test_plain_decimal_confidences_are_read(token: str, value: float) -> None:
    assert parse_prediction_string(f"7 {token} {M1}") == [(7, value, M1)]


@pytest.mark.parametrize("mask", ["ab!c", "\u00e9t\u00e9", "a=b"])
def test_mask_tokens_must_be_base64_text(mask: str) -> None:
    with pytest.raises(SubmissionError, match="is not base64 text"):
        parse_prediction_string(f"0 0.5 {mask}")


def test_ragged_row_is_named_by_line_and_does_not_shift_the_table(tmp_path) -> None:
    sample = _csv(tmp_path, "sample.csv", SAMPLE_LINES)
    sub = _csv(
        tmp_path,
        "sub.csv",
        [HEADER, f"a,4,3,0 1 {E34}", f"b,4,3,0 1 {E34},extra", f"c,4,3,0 0.5 {M1}"],
    )
    report = validate_submission(sub, sample)
    assert report.problems == {"b": ["line 3: 5 field(s), expected 4 (" + HEADER + ")"]}
    with pytest.raises(SubmissionError, match=r"sub.csv line 3: 5 field\(s\), expected 4"):
        read_submission(sub)
    short = _csv(tmp_path, "short.csv", [HEADER, f"a,4,3,0 1 {E34}", "zz,4"])
    problems = validate_submission(short, sample).problems
    assert problems[FILE_KEY] == ["line 3: 2 field(s), expected 4 (" + HEADER + ")"]
    assert problems["b"] == problems["c"] == ["missing: id of the sample has no row"]


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (HEADER + ",Extra", r"unknown column\(s\) \['Extra'\]"),
        ("ID,ImageWidth,ImageHeight,PredictionString,ID", r"repeated column\(s\) \['ID'\]"),
        ("ID,ImageWidth,ImageHeight", r"missing column\(s\) \['PredictionString'\]"),
        (" ID,ImageWidth,ImageHeight,PredictionString", r"missing column\(s\) \['ID'\]"),
    ],
)
def test_extra_repeated_or_missing_columns_are_rejected(tmp_path, header, message) -> None:
    n = header.count(",") + 1
    sub = _csv(tmp_path, "sub.csv", [header, ",".join(["a", "4", "3", f"0 1 {E34}", "x"][:n])])
    report = validate_submission(sub, _csv(tmp_path, "sample.csv", SAMPLE_LINES))
    assert list(report.problems) == [FILE_KEY]
    assert re.search(message, report.problems[FILE_KEY][0])
    with pytest.raises(SubmissionError, match=message):
        read_submission(sub)


def test_dataframe_with_repeated_columns_is_rejected() -> None:
    df = pd.concat([_good(), _good()[["ID"]]], axis=1)
    with pytest.raises(SubmissionError, match=r"repeated column\(s\) \['ID'\]"):
        read_submission(df)


def test_submission_id_with_surrounding_spaces_is_a_problem(tmp_path) -> None:
    sample = _csv(tmp_path, "sample.csv", SAMPLE_LINES)
    lines = [HEADER, f"a,4,3,0 1 {E34}", f" b,4,3,0 1 {E34}", f"c ,4,3,0 1 {E34}"]
    problems = validate_submission(_csv(tmp_path, "sub.csv", lines), sample).problems
    assert problems == {
        "b": ["line 3: ID ' b' has surrounding spaces"],
        "c": ["line 4: ID 'c ' has surrounding spaces"],
    }
    with pytest.raises(SubmissionError, match="line 3: ID ' b' has surrounding spaces"):
        read_submission(tmp_path / "sub.csv")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("+4", "not a positive integer written plainly"),
        ("04", "not a positive integer written plainly"),
        (" 4", "not a positive integer written plainly"),
        ("4_0", "not a positive integer written plainly"),
        ("\u0664", "not a positive integer written plainly"),
        ("4.0", "not a positive integer written plainly"),
        ("16385", "larger than 16384"),
        ("9" * 400, "larger than 16384"),
    ],
)
def test_sizes_must_be_written_plainly(tmp_path, text: str, message: str) -> None:
    sample = _csv(tmp_path, "sample.csv", SAMPLE_LINES)
    lines = [HEADER, f"a,{text},3,0 1 {E34}", f"b,4,3,0 1 {E34}", f"c,4,3,0 1 {E34}"]
    problems = validate_submission(_csv(tmp_path, "sub.csv", lines), sample).problems
    assert list(problems) == ["a"] and message in problems["a"][0]
    with pytest.raises(SubmissionError, match=f"line 2: ImageWidth .*{message}.*'a'"):
        read_submission(tmp_path / "sub.csv")


def test_quoted_fields_and_byte_order_mark_are_read(tmp_path) -> None:
    sample = _csv(tmp_path, "sample.csv", SAMPLE_LINES)
    lines = ['"ID","ImageWidth","ImageHeight","PredictionString"']
    lines += [f'"{i}","4","3","0 1 {E34}"' for i in "abc"]
    path = tmp_path / "quoted.csv"
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n\r\n")
    assert validate_submission(path, sample).ok
    assert read_submission(path)["ID"].tolist() == ["a", "b", "c"]


def test_bad_quoting_is_named_by_line(tmp_path) -> None:
    sample = _csv(tmp_path, "sample.csv", SAMPLE_LINES)
    lines = [HEADER, f"a,4,3,0 1 {E34}", f'b,4,3,"0 1 {E34}', f"c,4,3,0 1 {E34}"]
    problems = validate_submission(_csv(tmp_path, "sub.csv", lines), sample).problems
    assert problems[FILE_KEY][0].startswith("line 3: bad quoting")
    assert problems["b"] == ["missing: id of the sample has no row"]  # its row was unreadable
    assert list(problems) == [FILE_KEY, "b"]


# --------------------------------------------------------------------------- sample ids


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ('"a,b"', "ID 'a,b' holds a comma"),
        ('"a""b"', "ID 'a\"b' holds a quote"),
        ("a'b", 'ID "a\'b" holds a quote'),
        ("a/b", "ID 'a/b' holds a path separator"),
        ("a\\b", "ID 'a\\\\\\\\b' holds a path separator"),
        ("..", "ID '..' holds '..'"),
        ("x..y", "ID 'x..y' holds '..'"),
        (" a", "ID ' a' has surrounding spaces"),
        ("a ", "ID 'a ' has surrounding spaces"),
        ("a b", "ID 'a b' holds ' '"),
        ("a\tb", "ID 'a\\\\tb' holds"),
        ("\u00e9", "ID '\u00e9' holds '\u00e9'"),
        ("", "empty ID"),
    ],
)
def test_read_sample_rejects_unsafe_ids_with_line_and_id(tmp_path, field, message) -> None:
    path = _csv(tmp_path, "sample.csv", ["ID,ImageWidth,ImageHeight", "ok,4,3", f"{field},4,3"])
    with pytest.raises(SubmissionError, match=f"sample .*sample.csv line 3: {message}"):
        read_sample(path)
    with pytest.raises(SubmissionError, match="line 3"):
        write_submission(tmp_path / "s.csv", {}, path)
    assert not (tmp_path / "s.csv").exists()


@pytest.mark.parametrize(
    "image_id", ["a", "x.y", "a-b_1", "a,b", 'a"b', "a'b", "a/b", "a\\b", "..", "a b", "\u00e9", ""]
)
def test_check_image_id_is_the_rule_read_sample_applies(image_id) -> None:
    """Code that makes ids (hpa_kit.synth) checks them up front by the sample reader's rule."""
    sample = pd.DataFrame({"ID": [image_id], "ImageWidth": [4], "ImageHeight": [3]})
    try:
        read_sample(sample)
    except SubmissionError as exc:
        assert image_id not in ("a", "x.y", "a-b_1")
        with pytest.raises(SubmissionError) as found:
            check_image_id(image_id)
        assert str(found.value) in str(exc)
    else:
        assert image_id in ("a", "x.y", "a-b_1")
        assert check_image_id(image_id) == image_id


def test_read_sample_rejects_repeats_and_empty_samples(tmp_path) -> None:
    path = _csv(tmp_path, "sample.csv", ["ID,ImageWidth,ImageHeight", "a,4,3", "b,4,3", "a,4,3"])
    with pytest.raises(SubmissionError, match=r"line 4: repeated ID 'a' \(first at line 2\)"):
        read_sample(path)
    with pytest.raises(SubmissionError, match="has no rows"):
        read_sample(_csv(tmp_path, "empty.csv", ["ID,ImageWidth,ImageHeight"]))


# --------------------------------------------------------------------------- CLI: warnings, errors


def test_cli_validate_warns_about_rows_without_cells(tmp_path, capsys) -> None:
    sample = _csv(tmp_path, "sample.csv", SAMPLE_LINES)
    empty_cells = f"0 0.5 {E34} 3 0.25 {E34}"  # triplets, but every mask empty
    lines = [HEADER, f"a,4,3,0 0.9 {M1}", f"b,4,3,0 1 {E34}", f"c,4,3,{empty_cells}"]
    sub = _csv(tmp_path, "sub.csv", lines)
    assert main(["validate", sub, "--sample", sample]) == 0  # a warning, not a failure
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("OK: 3 rows")
    assert out[1] == (
        "warning: 2 of 3 rows carry no cell prediction (placeholder '0 1 <empty mask>', "
        "only empty masks, or an empty PredictionString)"
    )
    assert main(["validate", sub, "--sample", sample, "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["ok"] is True and report["n_rows_without_cells"] == 2
    assert report["problems"] == {} and report["n_rows"] == 3
    assert captured.err.startswith("hpa-kit validate: warning: 2 of 3 rows")
    lines[1] = "a,4,3,"  # an empty PredictionString: a problem, and a row without cells
    assert main(["validate", _csv(tmp_path, "e.csv", lines), "--sample", sample, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and report["n_rows_without_cells"] == 3
    assert report["problems"] == {
        "a": ["empty PredictionString (write the placeholder '0 1 <empty mask>')"]
    }


def _one_line_error(capsys, argv: list[str], code: int) -> str:
    assert main(argv) == code
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1, captured.err
    return captured.err


def test_cli_validate_named_errors_for_unreadable_inputs(tmp_path, capsys) -> None:
    sample = _csv(tmp_path, "sample.csv", SAMPLE_LINES)
    good = _csv(tmp_path, "good.csv", [HEADER] + [f"{i},4,3,0 1 {E34}" for i in "abc"])
    err = _one_line_error(capsys, ["validate", str(tmp_path), "--sample", sample], 2)
    assert err == f"hpa-kit validate: submission {tmp_path} is a directory, not a CSV file\n"
    err = _one_line_error(capsys, ["validate", good, "--sample", str(tmp_path)], 2)
    assert f"sample {tmp_path} is a directory" in err
    binary = tmp_path / "sub.csv.gz"
    binary.write_bytes(gzip.compress(Path(good).read_bytes()))
    err = _one_line_error(capsys, ["validate", str(binary), "--sample", sample], 2)
    assert "sub.csv.gz line 1 is not UTF-8 text" in err
    nul = tmp_path / "nul.csv"
    nul.write_bytes(Path(good).read_bytes().replace(b"a,4", b"a\x00,4"))
    err = _one_line_error(capsys, ["validate", str(nul), "--sample", sample], 2)
    assert "nul.csv line 2 holds a NUL byte" in err
    (tmp_path / "empty.csv").write_bytes(b"")
    err = _one_line_error(capsys, ["validate", str(tmp_path / "empty.csv"), "--sample", sample], 2)
    assert "empty.csv is empty: no header line" in err
    (tmp_path / "link.csv").symlink_to(tmp_path / "gone.csv")
    err = _one_line_error(capsys, ["validate", str(tmp_path / "link.csv"), "--sample", sample], 2)
    assert "submission file not found" in err


def test_cli_validate_names_the_id_of_a_truncated_file(tmp_path, capsys) -> None:
    sample = _csv(tmp_path, "sample.csv", SAMPLE_LINES)
    text = HEADER + "\n" + "".join(f"{i},4,3,0 0.5 {M1} 1 0.5 {M2}\n" for i in "abc")
    path = tmp_path / "cut.csv"
    path.write_text(text[: len(text) - 9])  # the last mask is cut
    assert main(["validate", str(path), "--sample", sample]) == 1
    out = capsys.readouterr().out
    assert out.startswith("INVALID: 1 problem(s) in 1 id(s)")
    assert "  c: triplet(s) [1]: mask " in out


def test_submission_error_is_a_usage_error() -> None:
    from hpa_kit.errors import UsageError

    assert issubclass(SubmissionError, UsageError) and SubmissionError.exit_code == 2

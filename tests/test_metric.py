"""hpa_kit.metric: hand-computed APs on literal masks, switches, pooling, CLI, real masks."""

from __future__ import annotations

import base64
import json
import math
import zlib

import numpy as np
import pandas as pd
import pytest

from hpa_kit.cli import main
from hpa_kit.metric import average_precision, box_iou, match_detections, score_submission
from hpa_kit.rle import empty_mask_string, encode_binary_mask, encode_label_image
from hpa_kit.submission import SubmissionError, format_prediction_string, validate_submission

# --------------------------------------------------------------------------- helpers


def _mask(shape: tuple[int, int], pixels: list[tuple[int, int]]) -> str:
    m = np.zeros(shape, dtype=bool)
    for r, c in pixels:
        m[r, c] = True
    return encode_binary_mask(m)


def _table(rows: dict[str, list[tuple[int, float, str]]], shape=(4, 5)) -> pd.DataFrame:
    h, w = shape
    return pd.DataFrame(
        {
            "ID": list(rows),
            "ImageWidth": [w] * len(rows),
            "ImageHeight": [h] * len(rows),
            "PredictionString": [format_prediction_string(t) for t in rows.values()],
        }
    )


SHAPE = (4, 5)
# Three disjoint cells in a 4 x 5 image.
A = _mask(SHAPE, [(0, 0), (0, 1), (1, 0), (1, 1)])
B = _mask(SHAPE, [(0, 3), (0, 4), (1, 3), (1, 4)])
C = _mask(SHAPE, [(3, 0), (3, 1), (3, 2), (3, 3), (3, 4)])
MISS = _mask(SHAPE, [(2, 2)])  # overlaps no cell
EMPTY = empty_mask_string(*SHAPE)


# --------------------------------------------------------------------------- pure parts


def test_match_detections_literal() -> None:
    ious = np.array(
        [
            [0.9, 0.7],  # -> cell 0, TP
            [0.8, 0.7],  # -> cell 0 again (highest IoU, already matched): FP, not cell 1
            [0.1, 0.6],  # -> cell 1 at exactly 0.6: TP
            [0.0, 0.0],  # nothing: FP
        ]
    )
    assert match_detections(ious).tolist() == [True, False, True, False]
    assert match_detections(np.zeros((2, 0))).tolist() == [False, False]
    assert match_detections(ious, threshold=0.95).tolist() == [False] * 4


def test_average_precision_by_hand() -> None:
    # TP, FP, TP with 2 truths: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1.
    # Interpolated: 1 over [0, 1/2], 2/3 over [1/2, 1] -> 1/2 + 1/3 = 5/6.
    assert average_precision([0.9, 0.8, 0.7], [1, 0, 1], num_truth=2) == pytest.approx(5 / 6)
    # Scores unsorted in input: sorted inside.
    assert average_precision([0.7, 0.9, 0.8], [1, 1, 0], num_truth=2) == pytest.approx(5 / 6)
    # Recall never reaches 1: remaining truth counts against AP.
    assert average_precision([0.5], [True], num_truth=4) == pytest.approx(0.25)
    assert average_precision([], [], num_truth=3) == 0.0
    # Equal scores keep their given order (stable): FP then TP -> precision 0, 1/2 -> AP 1/2.
    assert average_precision([0.5, 0.5], [False, True], num_truth=1) == pytest.approx(0.5)
    assert average_precision([0.5, 0.5], [True, False], num_truth=1) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        average_precision([0.5], [True], num_truth=0)
    with pytest.raises(ValueError):
        average_precision([0.5, 0.4], [True, True], num_truth=1)


def test_box_iou_literal() -> None:
    boxes = np.array([[0, 0, 2, 2], [1, 1, 2, 2], [10, 10, 0, 0]])
    out = box_iou(boxes, boxes)
    expected = np.array([[1.0, 1 / 7, 0.0], [1 / 7, 1.0, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(out, expected)


# --------------------------------------------------------------------------- rules


def test_perfect_submission_scores_one() -> None:
    truth = _table(
        {
            "img1": [(0, 1, A), (3, 1, A), (5, 1, B)],
            "img2": [(0, 1, C), (18, 1, A)],
        }
    )
    sub = _table(
        {
            "img1": [(0, 0.9, A), (3, 0.4, A), (5, 0.7, B)],
            "img2": [(0, 0.2, C), (18, 0.99, A)],
        }
    )
    result = score_submission(sub, truth)
    assert result.map == 1.0
    assert result.ap == {0: 1.0, 3: 1.0, 5: 1.0, 18: 1.0}
    assert result.num_truth == {0: 2, 3: 1, 5: 1, 18: 1}
    assert result.num_true_positives == {0: 2, 3: 1, 5: 1, 18: 1}


def test_duplicate_detection_is_false_positive() -> None:
    # Cells A, B of class 0; detections A (0.9), A again (0.8), B (0.7).
    # TP, FP, TP -> AP = 1 * 1/2 + 2/3 * 1/2 = 5/6 (see test_average_precision_by_hand).
    truth = _table({"img": [(0, 1, A), (0, 1, B)]})
    sub = _table({"img": [(0, 0.9, A), (0, 0.8, A), (0, 0.7, B)]})
    result = score_submission(sub, truth)
    assert result.ap[0] == pytest.approx(5 / 6)
    assert result.num_true_positives[0] == 2


def test_second_hit_takes_matched_cell_even_if_another_qualifies() -> None:
    # Truth cells: SMALL (5 px, row 0) and BIG (6 px, SMALL + (1, 0)); IoU(SMALL, BIG) = 5/6.
    # Detection 1 = BIG -> TP on BIG. Detection 2 = BIG again: its best cell is BIG (IoU 1,
    # matched) although SMALL (IoU 5/6 >= 0.6) is free -> FP. Detection 3 = SMALL -> TP.
    shape = (2, 5)
    small = _mask(shape, [(0, c) for c in range(5)])
    big = _mask(shape, [(0, c) for c in range(5)] + [(1, 0)])
    truth = _table({"img": [(0, 1, small), (0, 1, big)]}, shape)
    sub = _table({"img": [(0, 0.9, big), (0, 0.8, big), (0, 0.7, small)]}, shape)
    assert score_submission(sub, truth).ap[0] == pytest.approx(5 / 6)


def test_iou_exactly_threshold_is_true_positive_and_just_below_is_not() -> None:
    # 3 of 5 pixels: IoU 3/5 = 0.6 exactly -> TP -> AP 1.
    shape = (1, 5)
    cell = _mask(shape, [(0, c) for c in range(5)])
    three = _mask(shape, [(0, 0), (0, 1), (0, 2)])
    truth = _table({"img": [(2, 1, cell)]}, shape)
    assert score_submission(_table({"img": [(2, 0.5, three)]}, shape), truth).ap[2] == 1.0
    # 600 / 1000 pixels -> 0.6 (TP); 599 / 1000 -> 0.599 (FP, AP 0).
    shape = (40, 25)
    full = np.ones(shape, dtype=bool)
    truth = _table({"img": [(2, 1, encode_binary_mask(full))]}, shape)
    for n, expected in ((600, 1.0), (599, 0.0)):
        part = np.zeros(shape[0] * shape[1], dtype=bool)
        part[:n] = True
        pred = encode_binary_mask(part.reshape(shape))
        result = score_submission(_table({"img": [(2, 0.5, pred)]}, shape), truth)
        assert result.ap[2] == expected, n


def test_absent_class_ignored_or_false_positive() -> None:
    # img1 truth: class 0 on A. img2 truth: class 3 on B.
    # img1 also predicts class 3 on A (0.95): absent from img1's truth.
    truth = _table({"img1": [(0, 1, A)], "img2": [(3, 1, B)]})
    sub = _table({"img1": [(0, 0.9, A), (3, 0.95, A)], "img2": [(3, 0.5, B)]})
    on = score_submission(sub, truth)
    assert on.ap == {0: 1.0, 3: 1.0}
    assert on.map == 1.0
    assert on.num_detections == {0: 1, 3: 1}
    # Switch off: class 3 pooled = FP (0.95), TP (0.5) -> precision 0, 1/2 at recall 0, 1
    # -> AP 1/2; mAP (1 + 1/2) / 2.
    off = score_submission(sub, truth, ignore_absent_classes=False)
    assert off.ap == {0: 1.0, 3: 0.5}
    assert off.map == pytest.approx(0.75)
    assert off.num_detections == {0: 1, 3: 2}


def test_class_with_truth_but_no_detection_has_ap_zero() -> None:
    truth = _table({"img": [(0, 1, A), (5, 1, B)]})
    sub = _table({"img": [(0, 0.9, A)]})
    result = score_submission(sub, truth)
    assert result.ap == {0: 1.0, 5: 0.0}
    assert result.map == pytest.approx(0.5)
    # A class predicted but never in truth does not enter the mean, switch on or off.
    sub = _table({"img": [(0, 0.9, A), (7, 0.9, B)]})
    assert score_submission(sub, truth, ignore_absent_classes=False).ap == {0: 1.0, 5: 0.0}


def test_empty_predicted_mask_is_dropped() -> None:
    # If kept, the empty mask (0.99) would be a FP ahead of the TP -> AP 1/2.
    truth = _table({"img": [(0, 1, A)]})
    sub = _table({"img": [(0, 0.99, EMPTY), (0, 0.5, A)]})
    result = score_submission(sub, truth)
    assert result.ap[0] == 1.0
    assert result.num_detections[0] == 1


def test_placeholder_rows_and_empty_truth() -> None:
    # A truth row holding only the placeholder has no truth; a placeholder prediction is no
    # detection. img2's class-0 truth is missed -> recall 1/2 -> AP 1/2.
    truth = _table({"img1": [(0, 1, EMPTY)], "img2": [(0, 1, A), (0, 1, B)]})
    sub = _table({"img1": [(0, 1, EMPTY)], "img2": [(0, 1, EMPTY), (0, 0.3, A)]})
    result = score_submission(sub, truth)
    assert result.num_truth == {0: 2}
    assert result.ap[0] == pytest.approx(0.5)


def test_bbox_and_mask_iou_differ_on_l_shape() -> None:
    # Truth: the 3 x 3 square; prediction: an L of 5 of its pixels.
    # Mask IoU 5/9 < 0.6 -> FP (AP 0); the L's bounding box is the square -> IoU 1 -> AP 1.
    shape = (4, 5)
    square = _mask(shape, [(r, c) for r in range(3) for c in range(3)])
    ell = _mask(shape, [(0, 0), (1, 0), (2, 0), (2, 1), (2, 2)])
    truth = _table({"img": [(9, 1, square)]}, shape)
    sub = _table({"img": [(9, 0.8, ell)]}, shape)
    assert score_submission(sub, truth, iou="mask").ap[9] == 0.0
    assert score_submission(sub, truth, iou="bbox").ap[9] == 1.0
    with pytest.raises(ValueError, match="iou"):
        score_submission(sub, truth, iou="polygon")


def test_detections_pooled_across_images_with_interleaved_scores() -> None:
    # img1: truth A; detections A 0.9 (TP), MISS 0.5 (FP).
    # img2: truth A, B; detections MISS 0.8 (FP), B 0.6 (TP).
    # Pooled: 0.9 TP, 0.8 FP, 0.6 TP, 0.5 FP with 3 truths: precision 1, 1/2, 2/3, 1/2 at
    # recall 1/3, 1/3, 2/3, 2/3 -> AP = 1/3 * 1 + 1/3 * 2/3 = 5/9.
    # (Averaging per-image APs instead would give (1 + 1/4) / 2.)
    truth = _table({"img1": [(4, 1, A)], "img2": [(4, 1, A), (4, 1, B)]})
    sub = _table({"img1": [(4, 0.9, A), (4, 0.5, MISS)], "img2": [(4, 0.8, MISS), (4, 0.6, B)]})
    assert score_submission(sub, truth).ap[4] == pytest.approx(5 / 9)


def test_equal_scores_keep_string_order_then_truth_order() -> None:
    # Same image: MISS then A at equal score -> FP, TP -> AP 1/2 (stable); swapped -> 1.
    truth = _table({"img": [(0, 1, A)]})
    assert score_submission(_table({"img": [(0, 0.5, MISS), (0, 0.5, A)]}), truth).ap[0] == 0.5
    assert score_submission(_table({"img": [(0, 0.5, A), (0, 0.5, MISS)]}), truth).ap[0] == 1.0
    # Across images: truth row order decides (img2 listed first in truth here).
    truth = _table({"img2": [(0, 1, A)], "img1": [(0, 1, A)]})
    sub = _table({"img1": [(0, 0.5, A)], "img2": [(0, 0.5, MISS)]})
    # Pooled order: img2's FP, then img1's TP -> precision 0, 1/2 at recall 0, 1/2 -> 1/4.
    assert score_submission(sub, truth).ap[0] == pytest.approx(0.25)


def test_missing_and_extra_images() -> None:
    # img2 is absent from the submission: its truth still counts in recall -> AP 1/2.
    # img9 is not in the truth: not evaluated, even with the switch off.
    truth = _table({"img1": [(0, 1, A)], "img2": [(0, 1, A)]})
    sub = _table({"img1": [(0, 0.9, A)], "img9": [(0, 1.0, B)]})
    for switch in (True, False):
        result = score_submission(sub, truth, ignore_absent_classes=switch)
        assert result.ap[0] == pytest.approx(0.5)
        assert result.missing_ids == ("img2",)
        assert result.extra_ids == ("img9",)
        assert result.n_images == 2


def test_malformed_input_raises_with_id() -> None:
    truth = _table({"img": [(0, 1, A)]})
    bad_size = _table({"img": [(0, 0.9, A)]}, (5, 4))  # same pixel count, other shape
    with pytest.raises(SubmissionError, match="img.*differs"):
        score_submission(bad_size, truth)
    other = _table({"img": [(0, 0.9, encode_binary_mask(np.ones((3, 3), dtype=bool)))]})
    with pytest.raises(SubmissionError, match="submission img"):
        score_submission(other, truth)
    odd = truth.assign(PredictionString="0 0.5")
    with pytest.raises(SubmissionError, match="img"):
        score_submission(odd, truth)
    high = truth.assign(PredictionString=f"19 0.5 {A}")
    with pytest.raises(SubmissionError, match="class 19"):
        score_submission(high, truth)


def test_paths_and_result_dict(tmp_path) -> None:
    truth = _table({"img": [(0, 1, A), (5, 1, B)]})
    sub = _table({"img": [(0, 0.9, A)]})
    truth.to_csv(tmp_path / "truth.csv", index=False)
    sub.to_csv(tmp_path / "sub.csv", index=False)
    result = score_submission(tmp_path / "sub.csv", str(tmp_path / "truth.csv"))
    d = result.to_dict()
    assert d["map"] == pytest.approx(0.5)
    assert d["ap"] == {"0": 1.0, "5": 0.0}
    json.dumps(d)
    # Truth without any cell: no class to average over.
    empty = score_submission(sub, truth.assign(PredictionString=f"0 1 {EMPTY}"))
    assert math.isnan(empty.map) and empty.ap == {}
    assert json.loads(json.dumps(empty.to_dict(), allow_nan=False))["map"] is None


# --------------------------------------------------------------------------- CLI


def test_cli_score(tmp_path, capsys) -> None:
    shape = (4, 5)
    square = _mask(shape, [(r, c) for r in range(3) for c in range(3)])
    ell = _mask(shape, [(0, 0), (1, 0), (2, 0), (2, 1), (2, 2)])
    _table({"img": [(9, 1, square)]}).to_csv(tmp_path / "truth.csv", index=False)
    _table({"img": [(9, 0.8, ell), (2, 0.9, ell)]}).to_csv(tmp_path / "sub.csv", index=False)
    args = [str(tmp_path / "sub.csv"), "--truth", str(tmp_path / "truth.csv")]
    assert main(["score", *args]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["map"] == 0.0 and out["ap"] == {"9": 0.0} and out["iou"] == "mask"
    assert main(["score", *args, "--iou", "bbox"]) == 0
    assert json.loads(capsys.readouterr().out)["map"] == 1.0
    assert main(["score", *args, "--iou", "bbox", "--all-classes"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ignore_absent_classes"] is False and out["map"] == 1.0
    assert main(["score", str(tmp_path / "nope.csv"), "--truth", str(tmp_path / "truth.csv")]) == 2
    assert "not found" in capsys.readouterr().err


# --------------------------------------------------------------------------- real masks


def test_real_masks_score_one_against_themselves(samples_dir) -> None:
    from hpa_kit.io import read_label_image
    from hpa_kit.labels import parse_label_list

    labels_by_id = pd.read_csv(samples_dir / "train.csv").set_index("ID")["Label"]
    rows = []
    for path in sorted((samples_dir / "masks").glob("*_predictedmask.png")):
        image_id = path.name.removesuffix("_predictedmask.png")
        labels = read_label_image(path)
        classes = parse_label_list(labels_by_id[image_id])
        cells = encode_label_image(labels)
        triplets = [(c, 1.0, text) for text in cells.values() for c in classes]
        h, w = labels.shape
        rows.append((image_id, w, h, format_prediction_string(triplets)))
    assert len(rows) == 4
    truth = pd.DataFrame(rows, columns=["ID", "ImageWidth", "ImageHeight", "PredictionString"])
    result = score_submission(truth, truth)
    assert result.map == 1.0
    # 19 + 18 + 10 + 10 cells; the first image has 4 classes.
    assert sum(result.num_truth.values()) == 19 * 4 + 18 + 10 + 10
    assert set(result.ap) == {0, 1, 2, 7, 11, 17, 18}
    # Identical masks have identical boxes: bbox IoU is 1 too.
    assert score_submission(truth, truth, iou="bbox").map == 1.0


# --------------------------------------------------------------------------- one parser


@pytest.mark.parametrize(
    "text",
    [f"+1 0.5 {A}", f"1_0 0.5 {A}", f"\u0661 0.5 {A}", f"0 0_5 {A}", f"0 nan {A}", "0 0.5 a!b"],
)
def test_score_reads_predictions_by_the_submission_rules(text: str) -> None:
    # One parser: score refuses exactly what validate reports, with the same words.
    truth = _table({"img": [(0, 1, A)]})
    sub = truth.assign(PredictionString=text)
    problem = validate_submission(sub, truth).problems["img"][0]
    with pytest.raises(SubmissionError) as info:
        score_submission(sub, truth)
    assert problem in str(info.value) and "img" in str(info.value)
    with pytest.raises(SubmissionError, match="truth img"):
        score_submission(truth, sub)  # the same rules for the truth file


# --------------------------------------------------------------------------- empty truth masks


def test_empty_truth_mask_keeps_its_class_evaluated_as_the_host_does() -> None:
    # REFERENCE.md: "A truth file with an empty mask: host mAP 0.333 where 'drop the entry
    # first' gives 1.0". img2's truth holds class 0 with an empty mask: class 0 is evaluated
    # in img2 without any cell, so img2's two class-0 detections are false positives.
    # Pooled: 0.9 FP, 0.8 FP, 0.5 TP with 1 truth -> precision 1/3 at recall 1 -> AP 1/3.
    truth = _table({"img1": [(0, 1, A)], "img2": [(0, 1, EMPTY)]})
    sub = _table({"img1": [(0, 0.5, A)], "img2": [(0, 0.9, B), (0, 0.8, C)]})
    result = score_submission(sub, truth)
    assert result.map == pytest.approx(1 / 3)
    assert result.num_truth == {0: 1} and result.num_detections == {0: 3}
    # Dropping the empty entry first would make class 0 absent from img2 (ignored): AP 1.
    dropped = _table({"img1": [(0, 1, A)], "img2": [(5, 1, A)]})
    assert score_submission(sub, dropped).ap[0] == 1.0
    # The switch does not matter here: class 0 is evaluated in img2 either way.
    assert score_submission(sub, truth, ignore_absent_classes=False).ap[0] == pytest.approx(1 / 3)


def test_class_with_only_empty_truth_masks_is_not_averaged() -> None:
    # Class 3 is present (empty mask) but has no cell anywhere: not in the mean; its
    # detections are counted nowhere.
    truth = _table({"img": [(0, 1, A), (3, 1, EMPTY)]})
    sub = _table({"img": [(0, 0.9, A), (3, 0.9, B)]})
    result = score_submission(sub, truth)
    assert result.ap == {0: 1.0} and result.num_truth == {0: 1}


# --------------------------------------------------------------------------- CLI errors


def _score_error(capsys, argv: list[str]) -> str:
    assert main(["score", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1, captured.err
    return captured.err


def test_cli_score_named_errors(tmp_path, capsys) -> None:
    truth = _table({"img": [(0, 1, A)]})
    truth.to_csv(tmp_path / "truth.csv", index=False)
    t = str(tmp_path / "truth.csv")
    # An absurd width (OverflowError in int64 before): one line naming file, line and id.
    absurd = truth.assign(ImageWidth="1" + "0" * 30)
    absurd.to_csv(tmp_path / "absurd.csv", index=False)
    err = _score_error(capsys, [str(tmp_path / "absurd.csv"), "--truth", t])
    assert err == (
        f"hpa-kit score: submission {tmp_path / 'absurd.csv'} line 2: ImageWidth "
        "100000000000000000000... is larger than 16384 (ID 'img')\n"
    )
    err = _score_error(capsys, [t, "--truth", str(tmp_path / "absurd.csv")])
    assert "truth" in err and "larger than 16384" in err
    err = _score_error(capsys, [str(tmp_path), "--truth", t])
    assert err == f"hpa-kit score: submission {tmp_path} is a directory, not a CSV file\n"
    (tmp_path / "binary.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    err = _score_error(capsys, [str(tmp_path / "binary.csv"), "--truth", t])
    assert "binary.csv line 1 is not UTF-8 text" in err
    bomb = base64.b64encode(zlib.compress(b"0" * 2_000_000, 9)).decode()
    truth.assign(PredictionString=f"0 0.5 {bomb}").to_csv(tmp_path / "bomb.csv", index=False)
    err = _score_error(capsys, [str(tmp_path / "bomb.csv"), "--truth", t])
    assert "submission img: mask" in err and "decompresses to more than 56 bytes" in err

"""hpa_kit.predict and ``hpa-kit predict``: one image by hand, folders end to end, resume."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from job_helpers import KillerSegmenter, small_segmenter

from hpa_kit.cli import main
from hpa_kit.model import ClassifierConfig, build_classifier, save_checkpoint
from hpa_kit.predict import (
    PredictOptions,
    ResumeMismatchError,
    TooManyFailuresError,
    blend_probs,
    classify_crops,
    load_ensemble,
    predict_folder,
    predict_image,
    read_resume,
)
from hpa_kit.rle import decode_binary_mask
from hpa_kit.submission import parse_prediction_string, read_submission, validate_submission

RGB = ("red", "green", "blue")
RGBY = ("red", "green", "blue", "yellow")
FAST = PredictOptions(tta="none", num_workers=0, progress=False, batch_size=16, threads=1)
ONE_FAILURE_OK = FAST.replace(max_failures=1)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """One intra-op thread: on the shared 2-core machine, 2 threads are ~20x slower here."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------- one image


class _ChannelMeans(torch.nn.Module):
    """Logits = per-channel means of the (normalised) input, padded to 19 with zeros."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        means = x.mean(dim=(-2, -1))
        return torch.nn.functional.pad(means, (0, 19 - means.shape[1]))


def test_classify_crops_selects_channels_and_normalises():
    crops = np.zeros((2, 8, 8, 4), np.uint8)
    crops[0, ..., 0] = 255  # red
    crops[1, ..., 3] = 51  # yellow
    config = ClassifierConfig(
        arch="x", channels=("yellow", "red"), input_size=8, mean=(0.2, 0.5), std=(0.5, 0.25)
    )
    probs = classify_crops(crops, _ChannelMeans(), config, tta="none", batch_size=1)
    # crop 0: yellow 0 -> (0 - 0.2) / 0.5 = -0.4; red 1 -> (1 - 0.5) / 0.25 = 2
    # crop 1: yellow 0.2 -> 0; red 0 -> -2
    logits = np.array([[-0.4, 2.0], [0.0, -2.0]])
    np.testing.assert_allclose(probs[:, :2], 1 / (1 + np.exp(-logits)), rtol=1e-6)
    np.testing.assert_allclose(probs[:, 2:], 0.5)
    assert probs.shape == (2, 19) and probs.dtype == np.float32


def test_classify_crops_scale_views_pad_with_black():
    # A black crop (raw 0) stays "black" under scale0.8's padding: every view sees the same.
    crops = np.zeros((1, 10, 10, 4), np.uint8)
    config = ClassifierConfig(arch="x", channels=RGB, input_size=10)
    seed = classify_crops(crops, _ChannelMeans(), config, tta="seed")
    none = classify_crops(crops, _ChannelMeans(), config, tta="none")
    np.testing.assert_allclose(seed, none, rtol=1e-6)


class _BatchSizes(_ChannelMeans):
    """_ChannelMeans that records the batch size of every forward."""

    def __init__(self):
        super().__init__()
        self.seen: list[int] = []

    def forward(self, x):
        self.seen.append(x.shape[0])
        return super().forward(x)


def test_classify_crops_pads_batches_to_powers_of_two():
    """With padding the model sees only power-of-two batches (at most batch_size), and the
    results are those of the unpadded run; padding is off on the CPU by default."""
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (21, 8, 8, 4), dtype=np.uint8)
    config = ClassifierConfig(arch="x", channels=RGBY, input_size=8)
    padded, plain, default = _BatchSizes(), _BatchSizes(), _BatchSizes()
    got = classify_crops(crops, padded, config, tta="none", batch_size=8, pad_batches=True)
    want = classify_crops(crops, plain, config, tta="none", batch_size=8, pad_batches=False)
    classify_crops(crops, default, config, tta="none", batch_size=8)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got.shape == (21, 19)
    assert padded.seen == [8, 8, 8] and plain.seen == default.seen == [8, 8, 5]
    seeded = _BatchSizes()
    classify_crops(crops[:3], seeded, config, tta="seed", batch_size=8, pad_batches=True)
    assert seeded.seen == [4] * 5  # every view of the one batch


def test_classify_crops_rejects_bad_crops():
    config = ClassifierConfig(arch="x", channels=RGB, input_size=8)
    with pytest.raises(ValueError, match="RGBY uint8"):
        classify_crops(np.zeros((1, 8, 8, 3), np.uint8), _ChannelMeans(), config)


def test_blend_formula():
    cell = np.array([[0.2, 1.0], [0.6, 0.0]])
    image = np.array([1.0, 0.0])
    np.testing.assert_allclose(blend_probs(cell, image, 0.25), [[0.4, 0.75], [0.7, 0.0]])
    np.testing.assert_array_equal(blend_probs(cell, image, 0.0), cell)
    np.testing.assert_allclose(blend_probs(cell, image, 1.0), [[1.0, 0.0], [1.0, 0.0]])
    with pytest.raises(ValueError, match="weight"):
        blend_probs(cell, image, 1.5)


def test_predict_image_ensemble_mean_and_blend():
    image = np.zeros((20, 24, 4), np.uint8)
    labels = np.zeros((20, 24), np.int32)
    labels[1:4, 1:4] = 2
    labels[15:18, 16:19] = 5
    image[1:4, 1:4, 0] = 255  # cell 2 is red
    image[15:18, 16:19, 1] = 255  # cell 5 is green
    model = _ChannelMeans()
    a = ClassifierConfig(arch="x", channels=RGB, input_size=8, mean=(0, 0, 0), std=(1, 1, 1))
    b = ClassifierConfig(arch="x", channels=("green",), input_size=12, mean=(0,), std=(1,))
    options = PredictOptions(tta="none", margin=0.0)
    ids, probs = predict_image(image, labels, [(model, a), (model, b)], options=options)
    assert ids.tolist() == [2, 5]
    s = 1 / (1 + np.exp(-1.0))
    # model a: cell 2 sees red = 1, cell 5 green = 1; model b (green only): cell 5 green = 1.
    expected = np.full((2, 19), 0.5)
    expected[0, 0] = (s + 0.5) / 2
    expected[1, 1] = (s + 0.5) / 2
    expected[1, 0] = (0.5 + s) / 2
    np.testing.assert_allclose(probs, expected, rtol=1e-6)
    # Image blend: the whole image, resized to 8 / 12 px, through the same two models.
    blended_ids, blended = predict_image(
        image, labels, [(model, a), (model, b)], options=options.replace(image_weight=0.5)
    )
    assert blended_ids.tolist() == [2, 5]
    red, green = 9 / 480, 9 / 480  # mean of each colour over the whole 20 x 24 image
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    image_probs = np.full(19, 0.5)
    image_probs[0] = (sig(red) + sig(green)) / 2
    image_probs[1] = (sig(green) + 0.5) / 2
    np.testing.assert_allclose(blended, 0.5 * expected + 0.5 * image_probs[None], atol=2e-3)
    assert not np.allclose(blended, expected, atol=2e-3)


def test_predict_image_no_cells_and_bad_image():
    model = _ChannelMeans()
    config = ClassifierConfig(arch="x", channels=RGB, input_size=8)
    ids, probs = predict_image(
        np.zeros((6, 6, 4), np.uint8), np.zeros((6, 6), np.int32), [(model, config)]
    )
    assert ids.shape == (0,) and probs.shape == (0, 19)
    with pytest.raises(ValueError, match="RGBY"):
        predict_image(np.zeros((6, 6, 3), np.uint8), np.zeros((6, 6), np.int32), [(model, config)])


def test_options_validation():
    for bad in ({"tta": "d8"}, {"batch_size": 0}, {"image_weight": 1.5}, {"floor": -0.1},
                {"num_workers": -1}, {"prefetch": 0}, {"executor": "gpu"}, {"margin": -1}):  # fmt: skip
        with pytest.raises(ValueError):
            PredictOptions(**bad)


def test_load_ensemble(checkpoints, tmp_path):
    ensemble = load_ensemble(checkpoints, "cpu")
    assert [c.in_chans for _, c in ensemble] == [3, 4]
    assert [c.input_size for _, c in ensemble] == [32, 48]
    odd = ClassifierConfig(
        arch="test_efficientnet", channels=RGB, input_size=32, class_names=("a", "b")
    )
    save_checkpoint(tmp_path / "odd", build_classifier(odd.arch, 3, 2), odd)
    with pytest.raises(ValueError, match="ensemble must agree"):
        load_ensemble([checkpoints[0], tmp_path / "odd"], "cpu")
    with pytest.raises(ValueError, match="no checkpoints"):
        load_ensemble([], "cpu")


# --------------------------------------------------------------------------- folders


def _check_csv(csv, sample, n_cells_expected=None):
    report = validate_submission(csv, sample)
    assert report.ok, report.summary()
    table = read_submission(csv)
    for image_id, width, height, text in table.itertuples(index=False, name=None):
        triplets = parse_prediction_string(text)
        masks = {}
        for cls, _conf, mask in triplets:
            masks.setdefault(mask, []).append(cls)
        for classes in masks.values():
            assert classes == list(range(19)) or (len(masks) == 1 and classes == [0])
        if n_cells_expected is not None:
            assert len(masks) == n_cells_expected[image_id]
        # The cells' masks are disjoint.
        if len(masks) > 1:
            total = sum(decode_binary_mask(m, height, width).astype(int) for m in masks)
            assert total.max() == 1
    return table


def test_synthetic_folder_ensemble_3_and_4_channels(synth, checkpoints, tmp_path):
    out = tmp_path / "submission.csv"
    segmenter = small_segmenter()
    report = predict_folder(
        synth.out / "images",
        synth.sample_submission,
        checkpoints,
        out=out,
        segmenter=segmenter,
        options=FAST,
    )
    assert report.total == 3 and report.predicted == 3 and report.processed == 3
    assert not report.failures and not report.no_cells and report.complete
    expected = {}
    for image_id in synth.ids:
        from hpa_kit.io import read_image

        _, cells = segmenter.segment([read_image(synth.out / "images", image_id)])[0]
        expected[image_id] = int(len(np.unique(cells)) - 1)
    assert report.cells == sum(expected.values()) > 30
    _check_csv(out, synth.sample_submission, expected)
    assert "3 predicted" in report.summary()


def test_resume_equals_uninterrupted_byte_for_byte(synth, checkpoints, tmp_path):
    segmenter = small_segmenter()
    options = FAST.replace(tta="seed", image_weight=0.3, floor=0.4)
    ensemble = load_ensemble(checkpoints, "cpu")
    args = (synth.out / "images", synth.sample_submission, ensemble)
    full = predict_folder(*args, out=tmp_path / "full.csv", segmenter=segmenter, options=options)
    assert full.complete

    resume = tmp_path / "resume.jsonl"
    first = predict_folder(
        *args,
        out=tmp_path / "part.csv",
        segmenter=segmenter,
        options=options.replace(max_images=1),
        resume=resume,
    )
    assert first.processed == 1 and len(first.not_attempted) == 2 and not first.complete
    # A kill while writing the next record leaves half a line.
    with open(resume, "a") as f:
        f.write('{"id": "' + synth.ids[1] + '", "predic')
    second = predict_folder(
        *args, out=tmp_path / "part.csv", segmenter=segmenter, options=options, resume=resume
    )
    assert second.resumed == 1 and second.processed == 2 and second.complete
    assert (tmp_path / "part.csv").read_bytes() == (tmp_path / "full.csv").read_bytes()
    lines = resume.read_text().splitlines()
    assert [json.loads(line).get("id") for line in lines[1:]] == list(synth.ids)  # no duplicates
    # A third run has nothing left to do and writes the same file again.
    third = predict_folder(
        *args, out=tmp_path / "part.csv", segmenter=segmenter, options=options, resume=resume
    )
    assert third.processed == 0 and third.resumed == 3
    assert (tmp_path / "part.csv").read_bytes() == (tmp_path / "full.csv").read_bytes()
    # Other options, same resume file: refused.
    with pytest.raises(ResumeMismatchError, match='options.tta is "seed", this run.s is "none"'):
        predict_folder(
            *args,
            out=tmp_path / "x.csv",
            segmenter=segmenter,
            options=options.replace(tta="none"),
            resume=resume,
        )


def test_read_resume_tolerates_truncation(tmp_path):
    path = tmp_path / "r.jsonl"
    assert read_resume(path) == (None, {})
    path.write_text(
        '{"format": "hpa_kit.predict", "fingerprint": "abc"}\n'
        '{"id": "a", "prediction": "p1", "error": null, "cells": 3}\n'
        "garbage\n"
        '{"id": "b", "prediction": "0 1 x", "error": "boom", "cells": 0}\n'
        '{"id": "a", "prediction": "p2", "error": null, "cells": 3}\n'
        '{"id": "c", "predi'
    )
    header, records = read_resume(path)
    assert header == {"format": "hpa_kit.predict", "fingerprint": "abc"}
    assert sorted(records) == ["a", "b"]
    assert records["a"]["prediction"] == "p2" and records["b"]["error"] == "boom"


def test_missing_channel_gives_placeholder_and_report(synth, checkpoints, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(synth.out / "images", images)
    broken = synth.ids[1]
    (images / f"{broken}_yellow.png").unlink()
    resume = tmp_path / "resume.jsonl"
    out = tmp_path / "submission.csv"
    report = predict_folder(
        images,
        synth.sample_submission,
        checkpoints,
        out=out,
        segmenter=small_segmenter(),
        options=ONE_FAILURE_OK,
        resume=resume,
    )
    assert report.complete and report.predicted == 2
    assert list(report.failures) == [broken]
    assert "MissingChannelError" in report.failures[broken] and "yellow" in report.failures[broken]
    assert broken in report.summary()
    table = _check_csv(out, synth.sample_submission)
    row = table.set_index("ID").loc[broken, "PredictionString"]
    assert row.startswith("0 1 ") and len(parse_prediction_string(row)) == 1
    assert broken in report.write_report.placeholders
    # The failure is retried on restart: with the file back, the row is predicted.
    shutil.copy(synth.out / "images" / f"{broken}_yellow.png", images)
    again = predict_folder(
        images,
        synth.sample_submission,
        checkpoints,
        out=out,
        segmenter=small_segmenter(),
        options=ONE_FAILURE_OK,
        resume=resume,
    )
    assert again.resumed == 2 and again.processed == 1 and not again.failures


def test_wrong_size_in_sample_is_a_failure(synth, checkpoints, tmp_path):
    sample = pd.read_csv(synth.sample_submission)
    sample.loc[0, "ImageWidth"] = 300
    report = predict_folder(
        synth.out / "images",
        sample,
        checkpoints,
        out=tmp_path / "s.csv",
        segmenter=small_segmenter(),
        options=ONE_FAILURE_OK,
    )
    assert list(report.failures) == [synth.ids[0]]
    assert "256x256" in report.failures[synth.ids[0]] and "256x300" in report.failures[synth.ids[0]]


def test_too_many_failures_raise_after_writing_the_csv(synth, checkpoints, tmp_path):
    """Default max_failures (5 %): 1 failure of 3 is too many; the CSV is written all the same.
    A run in which every image failed raises whatever the limit."""
    sample = pd.read_csv(synth.sample_submission)
    sample.loc[0, "ImageWidth"] = 300  # fails at once, before segmentation
    out = tmp_path / "s.csv"
    args = (synth.out / "images", sample, checkpoints)
    with pytest.raises(TooManyFailuresError, match="1 of 3 images failed") as caught:
        predict_folder(*args, out=out, segmenter=small_segmenter(), options=FAST)
    assert list(caught.value.report.failures) == [synth.ids[0]]
    assert caught.value.report.predicted == 2 and caught.value.exit_code == 1
    assert validate_submission(out, sample).ok
    sample["ImageWidth"] = 300
    with pytest.raises(TooManyFailuresError, match="every attempted image failed"):
        predict_folder(
            *args, out=out, segmenter=small_segmenter(), options=FAST.replace(max_failures=10)
        )
    assert validate_submission(out, sample).ok


def test_worker_processes_give_the_same_csv(synth, checkpoints, tmp_path):
    segmenter = small_segmenter()
    inline = predict_folder(
        synth.out / "images",
        synth.sample_submission,
        checkpoints,
        out=tmp_path / "a.csv",
        segmenter=segmenter,
        options=FAST,
    )
    pooled = predict_folder(
        synth.out / "images",
        synth.sample_submission,
        checkpoints,
        out=tmp_path / "b.csv",
        segmenter=segmenter,
        options=FAST.replace(num_workers=2, prefetch=2),
    )
    assert inline.cells == pooled.cells
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()


def test_dead_worker_fails_only_its_image(synth, checkpoints, tmp_path):
    from hpa_kit.io import write_channels

    images = tmp_path / "images"
    shutil.copytree(synth.out / "images", images)
    write_channels(images, "odd", np.full((200, 256, 4), 9, np.uint8))
    sample = pd.read_csv(synth.sample_submission)
    odd = pd.DataFrame(
        {"ID": ["odd"], "ImageWidth": [256], "ImageHeight": [200], "PredictionString": [""]}
    )
    sample = pd.concat([sample.iloc[:1], odd, sample.iloc[1:]], ignore_index=True)
    ensemble = load_ensemble(checkpoints[:1], "cpu")
    options = ONE_FAILURE_OK.replace(num_workers=1, prefetch=3)
    report = predict_folder(
        images,
        sample,
        ensemble,
        out=tmp_path / "a.csv",
        segmenter=KillerSegmenter(),
        options=options,
    )
    assert list(report.failures) == ["odd"] and "worker process died" in report.failures["odd"]
    assert report.predicted == 3 and report.complete
    predict_folder(
        images, sample, ensemble, out=tmp_path / "b.csv", segmenter=small_segmenter(), options=FAST
    )
    a, b = (read_submission(tmp_path / f).set_index("ID") for f in ("a.csv", "b.csv"))
    assert a.drop(index="odd").equals(b.drop(index="odd"))


class _DeviceSplitSegmenter:
    """The small classical segmenter, split as a network segmenter is: its maps run in the
    calling thread (the device stage), its labelling in the workers."""

    def __init__(self):
        self.inner = small_segmenter()
        self.scale, self.config = self.inner.scale, self.inner.config
        self.maps_calls = 0

    def maps(self, images):
        self.maps_calls += 1
        return self.inner.maps(images)

    def device_stage(self):
        from hpa_kit.segment import DeviceStage

        return DeviceStage(maps=self.maps, labels=self.inner.labels)


def test_network_style_segmenter_path(synth, checkpoints, tmp_path):
    """A segmenter whose maps run in the main thread (as NetworkSegmenter) gives the same CSV."""
    segmenter = small_segmenter()
    predict_folder(
        synth.out / "images",
        synth.sample_submission,
        checkpoints,
        out=tmp_path / "a.csv",
        segmenter=segmenter,
        options=FAST,
    )
    split = _DeviceSplitSegmenter()
    report = predict_folder(
        synth.out / "images",
        synth.sample_submission,
        checkpoints,
        out=tmp_path / "b.csv",
        segmenter=split,
        options=FAST.replace(num_workers=1, executor="thread", prefetch=3),
    )
    assert "segment_device" in report.timings and split.maps_calls == len(synth.ids)
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()


def test_network_segmenter_says_its_device_stage():
    """The protocol, not the class, tells predict_folder what runs on the device."""
    from hpa_kit.segment import NetworkSegmenter, device_stage

    assert device_stage(small_segmenter()) is None
    assert device_stage(KillerSegmenter()) is None  # no method: all of it in the workers
    network = NetworkSegmenter(None, None, scale=0.5, pixel_size=8.0)
    stage = device_stage(network)
    assert stage.maps == network.maps
    nuclei = np.zeros((64, 64, 3), np.uint8)
    cells = np.zeros((64, 64, 3), np.uint8)
    got = stage.labels(nuclei, cells, (128, 128))
    want = network.labels(nuclei, cells, (128, 128))
    assert all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))
    import pickle

    assert pickle.loads(pickle.dumps(stage.labels))(nuclei, cells, (128, 128))[1].shape == (
        128,
        128,
    )


def test_real_samples_end_to_end(samples_dir, sample_ids, checkpoints, tmp_path):
    sample = tmp_path / "sample.csv"
    sizes = {sample_ids[0]: 2048, sample_ids[2]: 3072}
    pd.DataFrame(
        {"ID": list(sizes), "ImageWidth": list(sizes.values()), "ImageHeight": list(sizes.values())}
    ).to_csv(sample, index=False)
    out = tmp_path / "submission.csv"
    report = predict_folder(samples_dir / "images", sample, checkpoints[:1], out=out, options=FAST)
    assert report.complete and not report.failures and not report.no_cells, report.summary()
    # The README's cell counts (hpacellseg masks): 19 and 10; the classical segmenter is close.
    table = _check_csv(out, sample)
    n_masks = [
        len({m for _, _, m in parse_prediction_string(t)}) for t in table["PredictionString"]
    ]
    assert abs(n_masks[0] - 19) <= 3 and abs(n_masks[1] - 10) <= 3, n_masks


# --------------------------------------------------------------------------- CLI


def test_cli_predict_then_validate(checkpoints, tmp_path, capsys):
    from hpa_kit.synth import write_dataset

    # 1024 px: large enough for the segmenter's default (2048 px) sizes.
    synth = write_dataset(tmp_path / "synth", n=3, size=1024, seed=1)
    images = synth.out / "images"
    (images / f"{synth.ids[2]}_green.png").unlink()
    out = tmp_path / "submission.csv"
    code = main(
        [
            "predict",
            "--images",
            str(images),
            "--sample",
            str(synth.sample_submission),
            "--models",
            *map(str, checkpoints),
            "--classical",
            "--tta",
            "none",
            "--workers",
            "0",
            "--out",
            str(out),
            "--quiet",
            "--device",
            "cpu",
            "--max-failures",
            "1",
        ]  # fmt: skip
    )
    err = capsys.readouterr().err
    assert code == 0, err
    assert "no segmenter chosen" not in err  # --classical says so
    assert synth.ids[2] in err and "MissingChannelError" in err
    assert "2 predicted" in err and "without cells" not in err
    assert main(["validate", str(out), "--sample", str(synth.sample_submission)]) == 0
    table = read_submission(out).set_index("ID")
    assert len(parse_prediction_string(table.loc[synth.ids[0], "PredictionString"])) >= 19 * 5
    code = main(
        [
            "predict",
            "--images",
            str(images),
            "--sample",
            str(synth.sample_submission),
            "--models",
            str(checkpoints[0]),
            "--max-images",
            "1",
            "--workers",
            "0",
            "--out",
            str(out),
            "--quiet",
        ]  # fmt: skip
    )
    assert code == 3
    err = capsys.readouterr().err
    assert "no segmenter chosen" in err and "classifier thread(s)" in err  # --classical not given
    assert main(["validate", str(out), "--sample", str(synth.sample_submission)]) == 0
    code = main(
        [
            "predict",
            "--images",
            str(images),
            "--sample",
            str(synth.sample_submission),
            "--models",
            str(tmp_path / "nowhere"),
            "--out",
            str(out),
            "--quiet",
        ]  # fmt: skip
    )
    assert code == 2 and "nowhere" in capsys.readouterr().err

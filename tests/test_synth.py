"""hpa_kit.synth: determinism, truth consistency, layout statistics, patterns, dataset files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hpa_kit.labels import NEGATIVE, parse_label_list
from hpa_kit.synth import SynthConfig, class_counts, generate_image, write_dataset

SIZE = (160, 224)  # small and non-square


def _equivalent_radii(labels: np.ndarray) -> np.ndarray:
    areas = np.bincount(labels.ravel())[1:]
    return np.sqrt(areas[areas > 0] / np.pi)


# ---------------------------------------------------------------- generate_image


def test_same_seed_same_bytes_different_seed_differs():
    a = generate_image(size=SIZE, seed=5)
    b = generate_image(size=SIZE, seed=5)
    c = generate_image(size=SIZE, seed=6)
    assert a.image.tobytes() == b.image.tobytes()
    assert a.cell_labels.tobytes() == b.cell_labels.tobytes()
    assert a.nuclei_labels.tobytes() == b.nuclei_labels.tobytes()
    assert a.cell_classes == b.cell_classes and a.image_labels == b.image_labels
    assert a.image.tobytes() != c.image.tobytes()
    assert a.cell_labels.tobytes() != c.cell_labels.tobytes()


def test_contract_shapes_dtypes_and_truth_consistency():
    s = generate_image(size=SIZE, seed=11)
    assert s.image.shape == (160, 224, 4) and s.image.dtype == np.uint8
    assert s.cell_labels.shape == s.nuclei_labels.shape == (160, 224)
    assert s.cell_labels.dtype == s.nuclei_labels.dtype == np.int32
    ids = np.unique(s.cell_labels)
    # cells are 1..N without gaps, and cell_classes describes exactly those cells
    assert ids.tolist() == list(range(s.num_cells + 1))
    assert sorted(s.cell_classes) == list(range(1, s.num_cells + 1))
    for classes in s.cell_classes.values():
        assert classes == tuple(sorted(set(classes))) and 1 <= len(classes) <= 2
        assert NEGATIVE not in classes or classes == (NEGATIVE,)
    union = sorted({c for classes in s.cell_classes.values() for c in classes})
    assert list(s.image_labels) == union
    assert s.label_string == "|".join(map(str, union))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_cell_has_its_nucleus_inside(seed):
    s = generate_image(size=192, seed=seed)
    nuclei, cells = s.nuclei_labels, s.cell_labels
    inside = nuclei > 0
    assert np.array_equal(cells[inside], nuclei[inside])  # nucleus pixel -> same-id cell
    assert np.unique(nuclei[inside]).tolist() == list(range(1, s.num_cells + 1))
    nuc_area = np.bincount(nuclei.ravel(), minlength=s.num_cells + 1)[1:]
    cell_area = np.bincount(cells.ravel(), minlength=s.num_cells + 1)[1:]
    assert np.all(nuc_area < cell_area)


def test_cell_count_and_size_scale_with_image():
    config = SynthConfig()
    for seed in range(6):
        s = generate_image(size=128, seed=seed)
        assert config.cells[0] - 2 <= s.num_cells <= config.cells[1]
    small = generate_image(size=256, seed=3)
    large = generate_image(size=1024, seed=3)
    r_small = np.median(_equivalent_radii(small.cell_labels)) / 256
    r_large = np.median(_equivalent_radii(large.cell_labels)) / 1024
    assert 0.05 < r_small < 0.13 and 0.05 < r_large < 0.13
    assert abs(r_small - r_large) < 0.25 * r_large


def test_full_size_image_matches_real_statistics():
    s = generate_image(size=2048, seed=0)
    assert 10 <= s.num_cells <= 30
    radius = np.median(_equivalent_radii(s.cell_labels)) / 2048
    assert 0.06 < radius < 0.12  # real 2048 px samples: 0.06-0.11
    edge = np.concatenate(
        [s.cell_labels[0], s.cell_labels[-1], s.cell_labels[:, 0], s.cell_labels[:, -1]]
    )
    assert len(set(edge.tolist()) - {0}) >= 1  # some cells are cut by the image edge
    background = s.image[s.cell_labels == 0]
    cells = s.image[s.cell_labels > 0]
    assert np.all(np.median(background, axis=0) <= 5)  # dark background, as in real images
    assert np.all(cells.mean(axis=0)[[0, 2, 3]] > 10)  # red, blue, yellow fill the cells
    assert np.all(np.percentile(cells, 99, axis=0)[[0, 2, 3]] > 80)


def test_non_square_and_odd_sizes():
    s = generate_image(size=(96, 257), seed=2)
    assert s.image.shape == (96, 257, 4) and s.num_cells >= 1


@pytest.mark.parametrize("size", [31, (32, 20), 0, "256", (1.5, 64), (64, 64, 3), True])
def test_bad_size(size):
    with pytest.raises(ValueError, match="size"):
        generate_image(size=size, seed=0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"cells": (5, 2)},
        {"cells": (0, 3)},
        {"cell_radius": (0.1, 0.05)},
        {"classes": (18,)},
        {"classes": (3,)},
        {"classes": (0, 0)},
        {"classes": ()},
        {"classes_per_image": (0.5, 0.4)},
        {"negative_fraction": 1.5},
        {"noise": -1.0},
    ],
)
def test_bad_config(kwargs):
    with pytest.raises(ValueError, match="SynthConfig"):
        SynthConfig(**kwargs)


def test_classes_mix_within_images():
    images = [generate_image(size=128, seed=seed) for seed in range(12)]
    per_image = [len(s.image_labels) for s in images]
    assert sum(n >= 2 for n in per_image) >= 7  # typically 2-3 classes per image
    cells_fewer = [
        len(classes) < len(s.image_labels) for s in images for classes in s.cell_classes.values()
    ]
    assert np.mean(cells_fewer) > 0.5  # image labels differ from most cells' truth
    assert any(len(c) == 2 for s in images for c in s.cell_classes.values())
    counts = class_counts(images)
    assert counts.sum() == sum(len(c) for s in images for c in s.cell_classes.values())
    for s in images:  # every drawn class is on at least one cell
        assert set(s.image_labels) == {c for cl in s.cell_classes.values() for c in cl}


def test_negative_images_are_all_negative():
    s = generate_image(size=128, seed=1, config=SynthConfig(negative_fraction=1.0))
    assert s.image_labels == (NEGATIVE,)
    assert set(s.cell_classes.values()) == {(NEGATIVE,)}
    # no green pattern: the green channel stays at background level
    assert s.image[..., 1].max() < 20
    mixed = [
        generate_image(size=128, seed=k, config=SynthConfig(negative_fraction=0.0))
        for k in range(4)
    ]
    assert all(NEGATIVE not in s.image_labels for s in mixed)


NUCLEAR = (0, 2, 4)
CYTOPLASMIC = (13, 14, 16, 17)


@pytest.mark.parametrize("cls", NUCLEAR + CYTOPLASMIC + (1, 7))
def test_green_pattern_sits_where_its_class_says(cls):
    config = SynthConfig(classes=(cls,), classes_per_image=(1.0,), negative_fraction=0.0)
    s = generate_image(size=384, seed=cls, config=config)
    green = s.image[..., 1].astype(np.float64)
    nucleus = s.nuclei_labels > 0
    cytoplasm = (s.cell_labels > 0) & ~nucleus
    in_nucleus = green[nucleus].sum() / green[s.cell_labels > 0].sum()
    assert np.percentile(green[s.cell_labels > 0], 99) > 60  # a bright pattern
    if cls in NUCLEAR:
        assert in_nucleus > 0.75
    elif cls in CYTOPLASMIC or cls == 7:
        assert in_nucleus < 0.15
    else:  # nuclear membrane: a ring on the nucleus edge, half in, half out
        assert 0.3 < in_nucleus < 0.85
    if cls == 13:  # plasma membrane: brighter on the cell's border than in its body
        from hpa_kit.viz import find_outlines

        assert green[find_outlines(s.cell_labels)].mean() > 2 * green[cytoplasm].mean()


# ---------------------------------------------------------------- write_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "data"
    return write_dataset(out, n=3, size=(144, 176), seed=7, id_prefix="t")


def test_dataset_layout(dataset):
    out = dataset.out
    assert dataset.ids == ("t_00000", "t_00001", "t_00002") and not dataset.failures
    for image_id in dataset.ids:
        for color in ("red", "green", "blue", "yellow"):
            assert (out / "images" / f"{image_id}_{color}.png").is_file()
        assert (out / "masks" / f"{image_id}_cells.png").is_file()
        assert (out / "masks" / f"{image_id}_nuclei.png").is_file()
    train = pd.read_csv(dataset.train_csv, dtype=str)
    assert train.columns.tolist() == ["ID", "Label"] and train["ID"].tolist() == list(dataset.ids)
    sample = pd.read_csv(dataset.sample_submission)
    assert sample.columns.tolist() == ["ID", "ImageWidth", "ImageHeight", "PredictionString"]
    assert sample["ImageWidth"].eq(176).all() and sample["ImageHeight"].eq(144).all()


def test_dataset_files_match_generated_truth(dataset):
    from hpa_kit.io import read_image, read_label_image
    from hpa_kit.rle import decode_binary_mask
    from hpa_kit.submission import parse_prediction_string

    out = dataset.out
    train = pd.read_csv(dataset.train_csv, dtype=str).set_index("ID")["Label"]
    truth = pd.read_csv(dataset.truth).set_index("ID")
    total = 0
    for k, image_id in enumerate(dataset.ids):
        s = generate_image(size=(144, 176), seed=(7, k))
        assert np.array_equal(read_image(out / "images", image_id), s.image)
        cells = read_label_image(out / "masks" / f"{image_id}_cells.png")
        assert np.array_equal(cells, s.cell_labels)
        assert np.array_equal(
            read_label_image(out / "masks" / f"{image_id}_nuclei.png"), s.nuclei_labels
        )
        # image-level label = union of its cells' classes
        assert sorted(parse_label_list(train[image_id])) == list(s.image_labels)
        # the truth decodes to exactly the label image's cells, each with its classes
        row = truth.loc[image_id]
        assert (row["ImageWidth"], row["ImageHeight"]) == (176, 144)
        decoded: dict[int, set[int]] = {}
        for cls, conf, mask in parse_prediction_string(row["PredictionString"]):
            assert conf == 1.0
            pixels = decode_binary_mask(mask, 144, 176)
            ids = np.unique(cells[pixels])
            assert ids.size == 1 and ids[0] > 0  # one whole cell, no background
            assert np.array_equal(pixels, cells == ids[0])
            decoded.setdefault(int(ids[0]), set()).add(cls)
        assert decoded == {c: set(v) for c, v in s.cell_classes.items()}
        total += s.num_cells
    assert dataset.num_cells == total


def test_dataset_passes_validate_and_scores_itself(dataset):
    from hpa_kit.cli import main
    from hpa_kit.metric import score_submission

    sample = str(dataset.sample_submission)
    assert main(["validate", str(dataset.truth), "--sample", sample]) == 0
    assert main(["validate", sample, "--sample", sample]) == 0
    result = score_submission(dataset.truth, dataset.truth)
    assert result.map == pytest.approx(1.0)
    labels = {
        c
        for text in pd.read_csv(dataset.train_csv, dtype=str)["Label"]
        for c in parse_label_list(text)
    }
    assert set(result.ap) == labels


def test_dataset_is_deterministic(dataset, tmp_path):
    again = write_dataset(tmp_path / "again", n=2, size=(144, 176), seed=7, id_prefix="t")
    files = sorted(p.relative_to(again.out) for p in again.out.rglob("*") if p.is_file())
    assert len(files) == 2 * 6 + 3
    for rel in files:
        if rel.suffix == ".csv":  # n differs, so compare the shared rows
            first = pd.read_csv(dataset.out / rel, dtype=str).iloc[:2]
            assert first.equals(pd.read_csv(again.out / rel, dtype=str))
        else:
            assert (dataset.out / rel).read_bytes() == (again.out / rel).read_bytes(), rel


def test_write_dataset_records_failures_and_goes_on(tmp_path, monkeypatch):
    import hpa_kit.io

    real = hpa_kit.io.write_label_image

    def flaky(path, labels):
        if "t_00001" in str(path):
            raise OSError("disk full (simulated)")
        return real(path, labels)

    monkeypatch.setattr(hpa_kit.io, "write_label_image", flaky)
    data = write_dataset(tmp_path / "d", n=3, size=64, seed=0, id_prefix="t")
    assert data.ids == ("t_00000", "t_00002")
    assert list(data.failures) == ["t_00001"] and "disk full" in data.failures["t_00001"]
    for csv in (data.train_csv, data.sample_submission, data.truth):
        assert pd.read_csv(csv)["ID"].tolist() == ["t_00000", "t_00002"]


def test_write_dataset_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="n must"):
        write_dataset(tmp_path, n=0, size=64, seed=0)
    with pytest.raises(ValueError, match="id_prefix"):
        write_dataset(tmp_path, n=1, size=64, seed=0, id_prefix="a/b")
    with pytest.raises(ValueError, match="seed"):
        write_dataset(tmp_path, n=1, size=64, seed=-1)


@pytest.mark.parametrize("prefix", ['a"b', "a..b", "a'b", "a b", "a,b", "a/b", "caf\u00e9", ""])
def test_a_bad_id_prefix_is_refused_before_anything_is_written(tmp_path, capsys, prefix):
    """The ids must pass the sample reader's id rule (hpa_kit.submission.check_image_id): it
    is checked first, so a bad prefix writes nothing (it used to write images, masks,
    train.csv and sample_submission.csv, then fail on reading them back)."""
    from hpa_kit.cli import main

    out = tmp_path / "out"
    with pytest.raises(ValueError, match="id_prefix"):
        write_dataset(out, n=1, size=64, seed=0, id_prefix=prefix)
    assert main(["synth", str(out), "--n", "1", "--size", "64", "--id-prefix", prefix]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hpa-kit synth: id_prefix") and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("classes", ["01", "0,+16", "1_6", "\u0661", "", ","])
def test_cli_synth_takes_classes_only_as_written_plainly(tmp_path, capsys, classes):
    """--classes reads class tokens by hpa_kit.labels.class_index (int() read "01" as 1)."""
    from hpa_kit.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["synth", str(tmp_path / "out"), "--n", "1", "--size", "64", "--classes", classes])
    assert exit_.value.code == 2 and "classes must be" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_cli_synth(tmp_path: Path, capsys):
    from hpa_kit.cli import main

    out = tmp_path / "cli"
    code = main(
        [
            "synth",
            str(out),
            "--n",
            "2",
            "--size",
            "96x128",
            "--seed",
            "3",
            "--classes",
            "0,16",
            "--previews",
            "1",
        ]
    )
    assert code == 0
    assert "wrote 2 images" in capsys.readouterr().out
    assert (out / "previews" / "synth_00000.png").is_file()
    labels = pd.read_csv(out / "train.csv", dtype=str)["Label"]
    assert {c for text in labels for c in parse_label_list(text)} <= {0, 16}
    sample = pd.read_csv(out / "sample_submission.csv")
    assert sample["ImageHeight"].eq(96).all() and sample["ImageWidth"].eq(128).all()
    assert main(["synth", str(out), "--n", "1", "--size", "64", "--classes", "3"]) == 2
    with pytest.raises(SystemExit):
        main(["synth", str(out), "--n", "1", "--size", "big"])

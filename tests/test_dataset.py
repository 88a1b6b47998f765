"""hpa_kit.dataset: reading ids, labels, channel order, cache, errors, seeded sampling."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
import torch

from hpa_kit.dataset import HPADataset, SampleReadError, SeededSampler, find_missing, sample_seed
from hpa_kit.io import write_channels
from hpa_kit.labels import LabelError
from hpa_kit.model import CHANNEL_MEAN, CHANNEL_STD, ClassifierConfig

RGBY = ("red", "green", "blue", "yellow")


def _write(folder, image_id, values, shape=(6, 10)):
    """Constant planes (one value per RGBY channel) so channel order is visible."""
    image = np.stack([np.full(shape, v, np.uint8) for v in values], axis=-1)
    write_channels(folder, image_id, image, channels=RGBY)


@pytest.fixture
def table(tmp_path):
    images = tmp_path / "images"
    _write(images, "a", (10, 20, 30, 40))
    _write(images, "b", (50, 60, 70, 80))
    df = pd.DataFrame({"ID": ["a", "b"], "Label": ["8|5|0", "18"]})
    return df, images


def test_channels_in_order_and_multi_hot_targets(table):
    df, images = table
    ds = HPADataset(df, images, channels=("red", "green", "blue"))
    image, target = ds[0]
    assert image.shape == (6, 10, 3) and image.dtype == np.uint8
    assert image[0, 0].tolist() == [10, 20, 30]
    assert target.dtype == torch.float32 and target.shape == (19,)
    assert torch.nonzero(target).ravel().tolist() == [0, 5, 8]
    assert torch.nonzero(ds[1][1]).ravel().tolist() == [18]
    rgby = HPADataset(df, images, channels=4)[1][0]
    assert rgby[0, 0].tolist() == [50, 60, 70, 80]
    subset = HPADataset(df, images, channels=("yellow", "blue"))[1][0]
    assert subset[0, 0].tolist() == [80, 70]
    assert len(ds) == 2 and ds[-1][0][0, 0, 0] == 50


def test_resize_on_read(table):
    df, images = table
    image, _ = HPADataset(df, images, channels=3, size=4)[0]
    assert image.shape == (4, 4, 3)
    assert image[2, 2].tolist() == [10, 20, 30]


def test_for_config_normalises_with_the_config(table):
    df, images = table
    config = ClassifierConfig(arch="test_resnet", channels=RGBY, input_size=8)
    ds = HPADataset.for_config(df, images, config, train=False)
    tensor, _ = ds[0]
    assert tensor.shape == (4, 8, 8) and tensor.dtype == torch.float32
    for c, (name, v) in enumerate(zip(RGBY, (10, 20, 30, 40), strict=True)):
        expected = (v / 255 - CHANNEL_MEAN[name]) / CHANNEL_STD[name]
        assert float(tensor[c, 0, 0]) == pytest.approx(expected, abs=1e-5)


def test_seeded_keys_reproduce_training_augmentation(table):
    df, images = table
    config = ClassifierConfig(arch="test_resnet", channels=RGBY, input_size=8)
    ds = HPADataset.for_config(df, images, config, train=True)
    assert torch.equal(ds[(0, 5)][0], ds[(0, 5)][0])


def test_missing_channel_names_the_id(table):
    df, images = table
    (images / "b_green.png").unlink()
    ds = HPADataset(df, images, channels=3)
    with pytest.raises(SampleReadError, match="'b'") as info:
        ds[1]
    assert info.value.image_id == "b" and "green" in str(info.value)
    assert find_missing(["a", "b"], images, channels=3) == {
        "b": f"no green channel PNG in {images}"
    }
    assert find_missing(["a", "b"], images, channels=("red", "blue")) == {}


def test_corrupt_file_names_the_id_and_pickles(table):
    df, images = table
    (images / "a_red.png").write_bytes(b"not a png")
    with pytest.raises(SampleReadError, match="'a'.*CorruptImageError") as info:
        HPADataset(df, images, channels=3)[0]
    copy = pickle.loads(pickle.dumps(info.value))  # crosses DataLoader worker processes
    assert copy.image_id == "a" and str(copy) == str(info.value)


def test_worker_error_reaches_the_caller(table):
    df, images = table
    (images / "b_blue.png").unlink()
    loader = torch.utils.data.DataLoader(HPADataset(df, images, channels=3), num_workers=1)
    with pytest.raises(Exception, match="cannot read image id 'b'"):
        list(loader)


def test_bad_label_names_the_id(tmp_path):
    df = pd.DataFrame({"ID": ["x"], "Label": ["3|19"]})
    with pytest.raises(LabelError, match="'x'"):
        HPADataset(df, tmp_path)
    with pytest.raises(KeyError, match="Label"):
        HPADataset(pd.DataFrame({"ID": ["x"]}), tmp_path)
    unlabelled = HPADataset(pd.DataFrame({"ID": ["x"]}), tmp_path, label_col=None)
    assert unlabelled.targets.sum() == 0


def test_cache_read_first_and_written(table, tmp_path):
    df, images = table
    cache = tmp_path / "cache"
    _write(cache, "a", (1, 2, 3, 4), shape=(4, 4))  # a is cached (different values)
    ds = HPADataset(df, images, channels=3, size=4, cache_dir=cache, write_cache=True)
    assert ds[0][0][0, 0].tolist() == [1, 2, 3]  # from the cache
    assert not (cache / "b_red.png").exists()
    assert ds[1][0][0, 0].tolist() == [50, 60, 70]  # from images_dir, then cached
    assert (cache / "b_red.png").exists() and not (cache / "b_yellow.png").exists()
    (images / "b_red.png").unlink()
    assert ds[1][0].shape == (4, 4, 3)  # now served by the cache
    assert find_missing(["b"], images, channels=3, cache_dir=cache) == {}
    with pytest.raises(ValueError, match="cache_dir"):
        HPADataset(df, images, write_cache=True)


def test_seeded_sampler_order_and_seeds():
    sampler = SeededSampler(10, seed=3)
    sampler.set_epoch(0)
    first = list(sampler)
    assert sorted(i for i, _ in first) == list(range(10))
    assert first == list(sampler)  # a function of (seed, epoch)
    assert all(s == sample_seed(3, 0, i) for i, s in first)
    sampler.set_epoch(1)
    second = list(sampler)
    assert [i for i, _ in second] != [i for i, _ in first]
    # two ranks split the epoch (padded to a multiple of 2), each sample keeps its seed
    ranks = [SeededSampler(9, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for r in ranks:
        r.set_epoch(1)
    items = [item for r in ranks for item in r]
    assert len(items) == 10 and {i for i, _ in items} == set(range(9))
    assert all(s == sample_seed(3, 1, i) for i, s in items)
    assert len(ranks[0]) == 5


def test_real_samples(samples_dir, sample_ids):
    df = pd.read_csv(samples_dir / "train.csv")
    df = df[df["ID"].isin(sample_ids)].reset_index(drop=True)
    ds = HPADataset(df, samples_dir / "images", channels=4, size=64)
    for i in range(len(ds)):
        image, target = ds[i]
        assert image.shape == (64, 64, 4) and image.dtype == np.uint8
        assert target.sum() >= 1
    assert find_missing(list(df["ID"]), samples_dir / "images", channels=4) == {}

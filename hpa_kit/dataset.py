"""Image-level training data: an id's channel PNGs in, ``(image, multi-hot target)`` out.

A table (``pandas.DataFrame``) names the images: column ``ID`` holds the image id and column
``Label`` its label string (``"8|5|0"``, :func:`hpa_kit.labels.parse_labels`). The channels
of an id are ``{images_dir}/{id}_{color}.png`` (:func:`hpa_kit.io.read_image`), read in the
order given by ``channels`` (``("red", "green", "blue")`` or with ``"yellow"``) as an
``HxWxC`` uint8 image, optionally resized with area interpolation to ``size`` on read.

``dataset[i]`` returns ``(transform(image=image)["image"], target)`` where ``target`` is a
float32 tensor of 19 values. Normalisation is the transform's job
(:mod:`hpa_kit.augment`, with the mean/std of the run's
:class:`hpa_kit.model.ClassifierConfig`, which the checkpoint records so prediction uses
the same channels, size and normalisation); :meth:`HPADataset.for_config` wires the two.

Cache: with ``cache_dir`` an id is read from ``{cache_dir}/{id}_{color}.png`` when all its
channels are there (e.g. a folder written by ``hpa-kit prepare --size N``), otherwise from
``images_dir``; with ``write_cache=True`` the image (after the ``size`` resize) is then
written to ``cache_dir`` (atomic writes, safe with many workers), so later epochs decode
small PNGs instead of full-size ones.

Read failures raise :class:`SampleReadError` naming the id, the folder and the cause. The
training loop does not skip such an image (that would silently change the data and break
exact resume): it checks that every channel file exists before the first step
(:func:`find_missing`, all missing ids listed at once) and stops at the first unreadable
(corrupt) file with the id in the message.

Reproducible augmentation: ``dataset[(i, seed)]`` seeds the transform
(:func:`hpa_kit.augment.seed_pipeline`) with ``seed`` before drawing. :class:`SeededSampler`
yields such keys with ``seed`` a function of (run seed, epoch, index), so an epoch's
augmentations do not depend on worker count, worker timing or the number of processes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

try:
    import torch
    from torch.utils.data import Dataset, DistributedSampler, Sampler
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("hpa_kit.dataset needs torch: pip install torch") from exc

from hpa_kit.augment import RGB, channel_names, seed_pipeline, train_transform, val_transform
from hpa_kit.errors import RunError
from hpa_kit.labels import NUM_CLASSES, LabelError, parse_labels

__all__ = [
    "BagDataset",
    "HPADataset",
    "SampleReadError",
    "SeededSampler",
    "bag_groups",
    "collate_bags",
    "find_missing",
    "sample_seed",
]


class SampleReadError(RunError):
    """An image of the table could not be read; the message names the id and the cause.

    ``SampleReadError(message)`` (one argument) rebuilds the error from the text a
    ``DataLoader`` worker passes back (the worker's traceback): the id, folder and cause are
    read from its last line, so the main process reports the same one line.
    """

    def __init__(
        self, image_id: str, folder: str | Path | None = None, cause: BaseException | None = None
    ) -> None:
        if folder is None and cause is None:
            found = _READ_ERROR.findall(str(image_id))
            image_id, folder, text = found[-1] if found else ("?", "?", str(image_id))
        else:
            text = f"{type(cause).__name__}: {cause}"
        self.image_id = str(image_id)
        self.folder = str(folder)
        self.cause = text
        super().__init__(f"cannot read image id {self.image_id!r} from {self.folder}: {text}")

    def __reduce__(self):  # picklable: rebuilt from its message
        return (SampleReadError, (str(self),))


_READ_ERROR = re.compile(r"cannot read image id '([^'\n]*)' from ([^\n]*?): ([^\n]*)")


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of sample ``index`` in ``epoch`` of a run seeded ``seed``.

    >>> sample_seed(0, 1, 2) == sample_seed(0, 1, 2) != sample_seed(0, 2, 1)
    True
    """
    return int(np.random.SeedSequence([int(seed), int(epoch), int(index)]).generate_state(1)[0])


def _io():
    from hpa_kit import io

    return io


def _channel_problem(folder: str | Path, image_id: str, names: Sequence[str]) -> str | None:
    io = _io()
    lacking, empty = [], []
    for color in names:
        path = io.channel_path(folder, image_id, color)
        try:
            size = path.stat().st_size
        except OSError:
            lacking.append(color)
            continue
        if not path.is_file():
            lacking.append(color)
        elif size == 0:
            empty.append(path.name)
    if lacking:
        return f"no {', '.join(lacking)} channel PNG in {folder}"
    if empty:
        return f"empty file {', '.join(empty)} in {folder}"
    return None


def find_missing(
    ids: Sequence[str],
    images_dir: str | Path,
    *,
    channels: Sequence[str] = RGB,
    cache_dir: str | Path | None = None,
) -> dict[str, str]:
    """``{id: reason}`` for ids lacking a channel PNG (in ``images_dir`` and in ``cache_dir``)
    or whose channel file is empty (0 bytes).

    Only looks at the files' existence and size (cheap), not whether they decode.
    """
    names = channel_names(channels)
    missing: dict[str, str] = {}
    for image_id in ids:
        problem = _channel_problem(images_dir, image_id, names)
        if problem and cache_dir is not None and not _channel_problem(cache_dir, image_id, names):
            problem = None
        if problem:
            missing[str(image_id)] = problem
    return missing


class HPADataset(Dataset):
    """``(image tensor, target)`` pairs for the rows of ``df``.

    Parameters: ``df`` with columns ``id_col`` (default ``"ID"``) and ``label_col``
    (``"Label"``; use ``label_col=None`` for unlabelled data, targets are then all zeros);
    ``images_dir`` the folder of channel PNGs; ``channels`` names or count (3 = RGB,
    4 = RGBY); ``size`` resize on read (area; ``None`` keeps the stored size); ``transform``
    an albumentations pipeline (or any ``f(image=...) -> {"image": ...}``; ``None`` returns
    the uint8 image as an ``HxWxC`` numpy array); ``cache_dir`` / ``write_cache`` see the
    module docstring; ``targets`` an ``(len(df), 19)`` array of values in ``[0, 1]`` (soft
    labels, :mod:`hpa_kit.pseudo`) used instead of ``label_col``.
    """

    def __init__(
        self,
        df: Any,
        images_dir: str | Path,
        *,
        channels: int | Sequence[str] = RGB,
        size: int | None = None,
        transform: Any = None,
        cache_dir: str | Path | None = None,
        write_cache: bool = False,
        id_col: str = "ID",
        label_col: str | None = "Label",
        targets: np.ndarray | None = None,
    ) -> None:
        if id_col not in df.columns:
            raise KeyError(f"table has no {id_col!r} column (columns: {list(df.columns)})")
        self.ids: list[str] = [str(v) for v in df[id_col].tolist()]
        self.targets = np.zeros((len(self.ids), NUM_CLASSES), dtype=np.float32)
        if targets is not None:
            self.targets = _soft_targets(targets, len(self.ids))
        elif label_col is not None:
            if label_col not in df.columns:
                raise KeyError(f"table has no {label_col!r} column (columns: {list(df.columns)})")
            for row, (image_id, text) in enumerate(
                zip(self.ids, df[label_col].tolist(), strict=True)
            ):
                try:
                    self.targets[row] = parse_labels(text)
                except LabelError as exc:
                    raise LabelError(f"image id {image_id!r}: {exc}") from exc
        self.images_dir = Path(images_dir)
        self.channels = channel_names(channels)
        self.size = None if size is None else int(size)
        self.transform = transform
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.write_cache = bool(write_cache)
        if self.write_cache and self.cache_dir is None:
            raise ValueError("write_cache=True needs a cache_dir")

    @classmethod
    def for_config(
        cls,
        df: Any,
        images_dir: str | Path,
        config: Any,
        *,
        train: bool,
        read_size: int | None = None,
        **options: Any,
    ) -> HPADataset:
        """A dataset whose channels, size and normalisation follow a ``ClassifierConfig``.

        ``train=True`` uses :func:`~hpa_kit.augment.train_transform`, else
        :func:`~hpa_kit.augment.val_transform`; ``options`` go to the constructor.
        """
        make = train_transform if train else val_transform
        transform = make(
            config.input_size, channels=config.channels, mean=config.mean, std=config.std
        )
        return cls(
            df, images_dir, channels=config.channels, size=read_size, transform=transform, **options
        )

    def __len__(self) -> int:
        return len(self.ids)

    def read(self, index: int) -> np.ndarray:
        """The ``HxWxC`` uint8 image of row ``index`` (cache first, then ``images_dir``)."""
        io = _io()
        image_id = self.ids[index]
        if self.cache_dir is not None:
            try:
                return io.read_image(
                    self.cache_dir, image_id, channels=self.channels, size=self.size
                )
            except FileNotFoundError:
                pass
            except (OSError, ValueError) as exc:
                raise SampleReadError(image_id, self.cache_dir, exc) from exc
        try:
            image = io.read_image(self.images_dir, image_id, channels=self.channels, size=self.size)
        except (OSError, ValueError) as exc:
            raise SampleReadError(image_id, self.images_dir, exc) from exc
        if self.write_cache:
            io.write_channels(self.cache_dir, image_id, image, channels=self.channels)
        return image

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Any, torch.Tensor]:
        if isinstance(key, tuple):
            index, seed = key
        else:
            index, seed = key, None
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        index %= len(self)
        image = self.read(index)
        if image.ndim != 3 or image.shape[2] != len(self.channels) or image.dtype != np.uint8:
            raise SampleReadError(
                self.ids[index],
                self.images_dir,
                ValueError(
                    f"expected HxWx{len(self.channels)} uint8, got {image.shape} {image.dtype}"
                ),
            )
        if self.transform is not None:
            if seed is not None:
                seed_pipeline(self.transform, seed)
            image = self.transform(image=image)["image"]
        return image, torch.from_numpy(self.targets[index].copy())


def _soft_targets(targets: Any, rows: int) -> np.ndarray:
    array = np.asarray(targets, dtype=np.float32)
    if array.shape != (rows, NUM_CLASSES):
        raise ValueError(f"targets must have shape ({rows}, {NUM_CLASSES}), got {array.shape}")
    if not np.all((array >= 0) & (array <= 1)):
        raise ValueError("targets must lie in [0, 1]")
    return array.copy()


class SeededSampler(Sampler):
    """A :class:`~torch.utils.data.DistributedSampler` whose items carry an augmentation seed.

    Yields ``(index, sample_seed(seed, epoch, index))``. The order is the
    ``DistributedSampler``'s: a permutation drawn from ``seed + epoch`` (``shuffle=True``),
    padded to a multiple of ``world_size`` and split by ``rank``; call :meth:`set_epoch` before
    each epoch. With ``world_size=1`` it is a seeded shuffle of all indices.
    """

    def __init__(
        self,
        length: int,
        *,
        seed: int,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        self.seed = int(seed)
        self.epoch = 0
        self._inner = DistributedSampler(
            range(length),
            num_replicas=world_size,
            rank=rank,
            shuffle=shuffle,
            seed=self.seed,
            drop_last=drop_last,
        )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self._inner.set_epoch(self.epoch)

    def __len__(self) -> int:
        return len(self._inner)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in self._inner:
            yield index, sample_seed(self.seed, self.epoch, index)


# ---------------------------------------------------------------- bags (multiple instances)


def bag_groups(bags: Sequence[Any]) -> list[np.ndarray]:
    """Row indices of each bag, bags in order of first appearance.

    >>> [g.tolist() for g in bag_groups(["b", "a", "b", "c"])]
    [[0, 2], [1], [3]]
    """
    keys = np.asarray([str(b) for b in bags], dtype=object)
    if keys.size == 0:
        return []
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    rows = np.argsort(inverse, kind="stable")  # rows grouped by key, ascending within a key
    groups = np.split(rows, np.cumsum(np.bincount(inverse))[:-1])
    return [groups[label] for label in np.argsort(first, kind="stable")]


class BagDataset(Dataset):
    """Bags of rows of an :class:`HPADataset`: ``dataset[b]`` -> ``(images, target)``.

    ``images`` stacks the (transformed) rows of bag ``b`` (``(n, C, H, W)`` for tensor
    transforms); ``target`` is the bag's label: the union (element-wise maximum) of its
    rows' targets, i.e. the image's labels when the rows are its cell crops. Like
    :class:`HPADataset`, ``dataset[(b, seed)]`` seeds the augmentation, row ``j`` of the bag
    with ``sample_seed(seed, 0, j)``. :func:`collate_bags` batches bags without padding.
    """

    def __init__(self, rows: HPADataset, groups: Sequence[Sequence[int]]) -> None:
        self.rows = rows
        self.groups = [np.asarray(g, dtype=np.int64) for g in groups]
        if any(g.size == 0 for g in self.groups):
            raise ValueError("every bag needs at least one row")
        if any(g.min() < 0 or g.max() >= len(rows) for g in self.groups):
            raise ValueError(f"bag rows must be in 0..{len(rows) - 1}")
        self.targets = np.stack([rows.targets[g].max(axis=0) for g in self.groups])

    @classmethod
    def from_column(cls, rows: HPADataset, df: Any, column: str) -> BagDataset:
        """Bags of the rows of ``df`` (the table ``rows`` was built from) sharing ``column``."""
        if column not in df.columns:
            raise KeyError(f"table has no {column!r} column to group bags by")
        return cls(rows, bag_groups(df[column].tolist()))

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Any, torch.Tensor]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        group = self.groups[int(index)]
        items = [
            self.rows[int(row)] if seed is None else self.rows[(int(row), sample_seed(seed, 0, j))]
            for j, row in enumerate(group)
        ]
        images = [item[0] for item in items]
        stacked = torch.stack(images) if isinstance(images[0], torch.Tensor) else np.stack(images)
        return stacked, torch.from_numpy(self.targets[int(index)].copy())


def collate_bags(items: Sequence[tuple[torch.Tensor, torch.Tensor]]):
    """``[(images (n_b, ...), target), ...]`` -> ``(images (sum n_b, ...), bags, targets)``.

    ``bags[i]`` is the position in the batch of the bag of image ``i``
    (:mod:`hpa_kit.mil`'s contract); ``targets`` is ``(n_bags, 19)``.
    """
    images = torch.cat([item[0] for item in items])
    sizes = torch.tensor([len(item[0]) for item in items], dtype=torch.long)
    bags = torch.repeat_interleave(torch.arange(len(items)), sizes)
    return images, bags, torch.stack([item[1] for item in items])

"""Reading and writing HPA channel images and label images.

Data contract
-------------
- An image id has one greyscale file per channel: ``{folder}/{id}_{color}{ext}`` with colour in
  ``red`` (microtubules), ``green`` (protein of interest), ``blue`` (nucleus), ``yellow`` (ER).
- An *image* is an ``(height, width, channels)`` ``uint8`` array, C-contiguous, channels in the
  order requested; the default order is :data:`CHANNELS` (RGBY). ``channels=("red", "green",
  "blue")`` gives an RGB image.
- A *channel* is a 2-D ``(height, width)`` ``uint8`` array.
- Channel names are checked once, here (:func:`check_channels`); so is a network input's
  per-channel normalisation ``(x / 255 - mean) / std`` (:func:`check_normalisation`; the seed's
  values :data:`CHANNEL_MEAN` / :data:`CHANNEL_STD`, fractions of 255, REFERENCE.md section 2).
- A *label image* is a 2-D ``int32`` array, 0 = background, 1..N = cells. On disk it is a
  greyscale PNG, 8- or 16-bit when read, always 16-bit when written (so at most 65535 cells).
- Sizes are ``(height, width)``; an int ``n`` means ``(n, n)``.

16-bit to 8-bit (the one rule, :func:`to_uint8`)
------------------------------------------------
``v8 = (v16 + 128) // 257``: division by 257 with rounding to the nearest integer. It maps the
full 16-bit range linearly onto the full 8-bit range (0 -> 0, 65535 -> 255), each 8-bit level
is the one whose value ``v8 / 255`` is nearest to ``v16 / 65535``, and it is the exact inverse of
the usual 8-to-16-bit widening ``v16 = v8 * 257``, so an 8-bit image saved as 16-bit comes back
unchanged. It is a fixed rule, with no per-image stretching: the relative brightness of images
and channels (the green channel's intensity carries information) stays comparable across all
16-bit HPA public images, whatever their content.

Colour files where a grey file is expected
------------------------------------------
A channel file that decodes to 3 (BGR) or 4 (BGRA) planes is accepted only when the conversion
is lossless: all colour planes equal (a grey image saved as colour) and, for BGRA, the alpha
plane fully opaque. Anything else raises :class:`ImageShapeError`, since picking a plane or
mixing planes would silently change intensities. ``(height, width, 1)`` is squeezed to 2-D.

Errors
------
All errors are :class:`ImageError` (a ``ValueError``) subclasses and name the file or id:
:class:`MissingChannelError` (also a ``FileNotFoundError``), :class:`CorruptImageError`
(unreadable or truncated), :class:`ChannelMismatchError` (channels of different sizes),
:class:`ImageShapeError` (wrong number of dimensions, planes or dtype).

>>> to_uint8(np.array([0, 128, 129, 257, 65535], dtype=np.uint16)).tolist()
[0, 0, 1, 1, 255]
>>> resize_area(np.full((4, 6, 2), 9, dtype=np.uint8), (2, 3)).shape
(2, 3, 2)
>>> channel_path("images", "abc", "green").as_posix()
'images/abc_green.png'
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hpa_kit.outputs import atomic_path  # re-exported: the one home of atomic writes

__all__ = [
    "CHANNELS",
    "CHANNEL_MEAN",
    "CHANNEL_STD",
    "ChannelMismatchError",
    "CorruptImageError",
    "ImageError",
    "ImageShapeError",
    "MissingChannelError",
    "MissingImageError",
    "atomic_path",
    "channel_path",
    "check_channels",
    "check_normalisation",
    "list_image_ids",
    "read_channel",
    "read_image",
    "read_label_image",
    "resize_area",
    "size_pair",
    "to_uint8",
    "write_channels",
    "write_label_image",
]

CHANNELS: tuple[str, ...] = ("red", "green", "blue", "yellow")
# Per-channel normalisation of the seed solution, as fractions of 255 (REFERENCE.md section 2).
CHANNEL_MEAN: dict[str, float] = {"red": 0.0807, "green": 0.0524, "blue": 0.0539, "yellow": 0.0810}
CHANNEL_STD: dict[str, float] = {"red": 0.1481, "green": 0.1095, "blue": 0.1565, "yellow": 0.2729}

_MAX_LABEL = 65535
_RESIZE_DTYPES = (np.uint8, np.uint16, np.int16, np.float32, np.float64)


class ImageError(ValueError):
    """An image or label file, or an image array, that does not follow the data contract."""


class MissingImageError(ImageError, FileNotFoundError):
    """An image or label file that does not exist."""


class MissingChannelError(MissingImageError):
    """A channel file of an image id that does not exist."""


class CorruptImageError(ImageError):
    """A file that exists but cannot be decoded (corrupt, truncated, not an image)."""


class ChannelMismatchError(ImageError):
    """Channel files of one image id with different sizes."""


class ImageShapeError(ImageError):
    """An array or file with the wrong number of dimensions, planes, or the wrong dtype."""


def _cv2():
    try:
        import cv2
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("hpa_kit.io needs OpenCV: pip install opencv-python-headless") from error
    return cv2


def to_uint8(array: np.ndarray) -> np.ndarray:
    """``uint8`` passes through unchanged; ``uint16`` becomes ``(v + 128) // 257`` (see module doc).

    Other dtypes raise :class:`ImageShapeError`.

    >>> to_uint8(np.array([[385, 386], [65406, 65407]], dtype=np.uint16)).tolist()
    [[1, 2], [254, 255]]
    """
    array = np.asarray(array)
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)
    raise ImageShapeError(f"expected a uint8 or uint16 image, got dtype {array.dtype}")


def _imread(path: Path, missing: type[MissingImageError]) -> np.ndarray:
    if not path.is_file():
        what = "channel file" if issubclass(missing, MissingChannelError) else "image file"
        raise missing(f"{what} not found: {path}")
    data = _cv2().imread(str(path), _cv2().IMREAD_UNCHANGED)
    if data is None:
        raise CorruptImageError(
            f"cannot decode image file (corrupt, truncated or not an image): {path}"
        )
    return data


def _to_grey(data: np.ndarray, path: Path) -> np.ndarray:
    if data.ndim == 3 and data.shape[2] == 1:
        data = data[:, :, 0]
    elif data.ndim == 3 and data.shape[2] in (3, 4):
        colour = data[:, :, :3]
        same = (colour[:, :, 0] == colour[:, :, 1]).all() and (
            colour[:, :, 0] == colour[:, :, 2]
        ).all()
        opaque = data.shape[2] == 3 or (
            np.issubdtype(data.dtype, np.integer)
            and (data[:, :, 3] == np.iinfo(data.dtype).max).all()
        )
        if not (same and opaque):
            raise ImageShapeError(
                f"expected a greyscale image, got {data.shape[2]} planes that differ"
                + ("" if opaque else " or are not fully opaque")
                + f" (shape {data.shape}, dtype {data.dtype}): {path}"
            )
        data = data[:, :, 0]
    if data.ndim != 2:
        raise ImageShapeError(
            f"expected a 2-D greyscale image, got shape {data.shape} (dtype {data.dtype}): {path}"
        )
    return data


def read_channel(path: str | os.PathLike) -> np.ndarray:
    """One channel file as a 2-D ``uint8`` array (16-bit files by the :func:`to_uint8` rule).

    Raises :class:`MissingChannelError`, :class:`CorruptImageError` or :class:`ImageShapeError`.
    """
    path = Path(path)
    data = _to_grey(_imread(path, MissingChannelError), path)
    if data.dtype not in (np.uint8, np.uint16):
        raise ImageShapeError(f"expected an 8- or 16-bit image, got dtype {data.dtype}: {path}")
    return np.ascontiguousarray(to_uint8(data))


def channel_path(
    folder: str | os.PathLike, image_id: str, color: str, *, ext: str = ".png"
) -> Path:
    """``{folder}/{image_id}_{color}{ext}``."""
    if not ext.startswith("."):
        ext = "." + ext
    return Path(folder) / f"{image_id}_{color}{ext}"


def check_channels(channels: Sequence[str], *, repeats: bool = False) -> tuple[str, ...]:
    """``channels`` as a tuple: a non-empty sequence of names from :data:`CHANNELS`, each once.

    ``repeats=True`` lets a name come back (reading a plane twice is harmless). Raises
    ``ValueError`` naming what was given.

    >>> check_channels(["green", "blue"])
    ('green', 'blue')
    >>> check_channels(("blue", "blue"), repeats=True)
    ('blue', 'blue')
    >>> check_channels(("red", "red"))
    Traceback (most recent call last):
    ...
    ValueError: channels must be distinct, got ('red', 'red')
    >>> check_channels(("red", "magenta"))
    Traceback (most recent call last):
    ...
    ValueError: unknown channels ['magenta']; known: ('red', 'green', 'blue', 'yellow')
    """
    if isinstance(channels, str) or not all(isinstance(c, str) for c in channels):
        raise ValueError(
            f"channels must be a sequence of colour names such as {CHANNELS}, got {channels!r}"
        )
    names = tuple(channels)
    if not names:
        raise ValueError("channels is empty")
    unknown = [c for c in names if c not in CHANNELS]
    if unknown:
        raise ValueError(f"unknown channels {unknown}; known: {CHANNELS}")
    if not repeats and len(set(names)) != len(names):
        raise ValueError(f"channels must be distinct, got {names}")
    return names


def check_normalisation(
    channels: Sequence[str],
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` of a network input with these ``channels``, one float per channel.

    Fractions of 255, used as ``(x / 255 - mean) / std``. Either left as ``None`` takes the
    seed's values of those channels (:data:`CHANNEL_MEAN`, :data:`CHANNEL_STD`); given ones need
    one value per channel, and every ``std`` must be positive.

    >>> check_normalisation(("green", "blue"))
    ((0.0524, 0.0539), (0.1095, 0.1565))
    >>> check_normalisation(("red",), mean=[0.5], std=(0.25,))
    ((0.5,), (0.25,))
    >>> check_normalisation(("red", "green"), std=(0.1, 0.0))
    Traceback (most recent call last):
    ...
    ValueError: std values must be positive, got (0.1, 0.0)
    """
    names = check_channels(channels)
    mean_t = tuple(CHANNEL_MEAN[c] for c in names) if mean is None else tuple(map(float, mean))
    std_t = tuple(CHANNEL_STD[c] for c in names) if std is None else tuple(map(float, std))
    if len(mean_t) != len(names) or len(std_t) != len(names):
        raise ValueError(
            f"mean and std need one value per channel ({len(names)}: {names}), "
            f"got {len(mean_t)} and {len(std_t)}"
        )
    if not all(s > 0 for s in std_t):
        raise ValueError(f"std values must be positive, got {std_t}")
    return mean_t, std_t


def size_pair(size: int | Sequence[int]) -> tuple[int, int]:
    """``(height, width)`` of a size given as ``n`` (square) or ``(height, width)``.

    >>> size_pair(512), size_pair((1728, 2048))
    ((512, 512), (1728, 2048))
    """
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        pair = (int(size), int(size))
    elif (
        isinstance(size, Sequence)
        and len(size) == 2
        and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in size)
    ):
        pair = (int(size[0]), int(size[1]))
    else:
        raise ValueError(f"size must be an int or a (height, width) pair of ints, got {size!r}")
    if min(pair) < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return pair


def resize_area(image: np.ndarray, size: int | Sequence[int]) -> np.ndarray:
    """A new array resized to ``size`` = ``(height, width)`` (or ``n`` for ``(n, n)``).

    Area interpolation (``cv2.INTER_AREA``); keeps the dtype and the number of dimensions
    (2-D or HxWxC, any C). Not for label images (use nearest-neighbour there).
    """
    height, width = size_pair(size)
    image = np.asarray(image)
    if image.ndim not in (2, 3) or image.size == 0:
        raise ImageShapeError(f"expected a non-empty HxW or HxWxC image, got shape {image.shape}")
    if image.dtype not in _RESIZE_DTYPES:
        raise ImageShapeError(
            f"cannot area-resize dtype {image.dtype}; supported: "
            f"{', '.join(np.dtype(d).name for d in _RESIZE_DTYPES)}"
        )
    if image.shape[:2] == (height, width):
        return image.copy()
    cv2 = _cv2()
    out = cv2.resize(np.ascontiguousarray(image), (width, height), interpolation=cv2.INTER_AREA)
    if image.ndim == 3 and out.ndim == 2:
        out = out[:, :, None]
    return out


def read_image(
    folder: str | os.PathLike,
    image_id: str,
    *,
    channels: Sequence[str] = CHANNELS,
    size: int | Sequence[int] | None = None,
    ext: str = ".png",
) -> np.ndarray:
    """The ``(height, width, len(channels))`` ``uint8`` image of one id, channels in that order.

    ``size`` resizes with area interpolation. Raises :class:`MissingChannelError` (naming the
    path), :class:`CorruptImageError`, :class:`ImageShapeError` or
    :class:`ChannelMismatchError` (naming the id and every channel's shape).
    """
    channels = check_channels(channels, repeats=True)
    target = None if size is None else size_pair(size)
    planes: dict[str, np.ndarray] = {}
    for color in channels:
        if color not in planes:
            planes[color] = read_channel(channel_path(folder, image_id, color, ext=ext))
    shapes = {color: plane.shape for color, plane in planes.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{color} {shape}" for color, shape in shapes.items())
        raise ChannelMismatchError(
            f"channels of image {image_id!r} in {folder} differ in size: {listed}"
        )
    image = np.stack([planes[color] for color in channels], axis=-1)
    if target is not None and image.shape[:2] != target:
        image = resize_area(image, target)
    return image


def _atomic_imwrite(path: Path, array: np.ndarray) -> Path:
    cv2 = _cv2()
    with atomic_path(path) as temp:
        try:
            written = cv2.imwrite(str(temp), array)
        except cv2.error as error:
            raise ImageError(
                f"OpenCV could not write {path} (shape {array.shape}, {array.dtype}): {error}"
            ) from error
        if not written:
            raise ImageError(f"OpenCV could not write {path} (shape {array.shape}, {array.dtype})")
    return path


def write_channels(
    folder: str | os.PathLike,
    image_id: str,
    image: np.ndarray,
    *,
    channels: Sequence[str] = CHANNELS,
    ext: str = ".png",
) -> list[Path]:
    """Write an HxWxC ``uint8`` image as one greyscale file per channel; returns the paths.

    Each file is written under a temporary name and renamed (:func:`atomic_path`, from
    :mod:`hpa_kit.outputs`), so a reader never sees half a file; the leftovers of a killed
    write are removed by a later run's first write into ``folder``.
    """
    channels = check_channels(channels)
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != len(channels) or image.dtype != np.uint8:
        raise ImageShapeError(
            f"expected an HxWx{len(channels)} uint8 image for channels {channels}, got shape "
            f"{image.shape} dtype {image.dtype}"
        )
    return [
        _atomic_imwrite(
            channel_path(folder, image_id, color, ext=ext), np.ascontiguousarray(image[:, :, i])
        )
        for i, color in enumerate(channels)
    ]


def list_image_ids(
    folder: str | os.PathLike, *, channel: str = "red", ext: str = ".png"
) -> list[str]:
    """Sorted ids that have a ``{id}_{channel}{ext}`` file in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    if not ext.startswith("."):
        ext = "." + ext
    suffix = f"_{channel}{ext}"
    return sorted(
        p.name[: -len(suffix)]
        for p in folder.iterdir()
        if p.name.endswith(suffix) and len(p.name) > len(suffix) and p.is_file()
    )


def read_label_image(path: str | os.PathLike) -> np.ndarray:
    """A label image file (8- or 16-bit greyscale PNG, or int32 TIFF) as 2-D ``int32``.

    Colour files are rejected (:class:`ImageShapeError`): labels are not intensities.
    """
    path = Path(path)
    data = _imread(path, MissingImageError)
    if data.ndim == 3 and data.shape[2] == 1:
        data = data[:, :, 0]
    if data.ndim != 2:
        raise ImageShapeError(
            f"expected a 2-D greyscale label image, got shape {data.shape} (dtype {data.dtype}): "
            f"{path}"
        )
    if data.dtype not in (np.uint8, np.uint16, np.int32):
        raise ImageShapeError(
            f"expected an 8-, 16-bit or int32 label image, got dtype {data.dtype}: {path}"
        )
    if data.dtype == np.int32 and data.min() < 0:
        raise ImageShapeError(f"label image holds negative labels (min {data.min()}): {path}")
    return np.ascontiguousarray(data, dtype=np.int32)


def write_label_image(path: str | os.PathLike, labels: np.ndarray) -> Path:
    """Write a 2-D integer label image as a 16-bit PNG (or TIFF); returns the path.

    Raises :class:`ImageShapeError` for non-integer or non-2-D input, negative labels, or a
    label above 65535. Written atomically (temporary name, then rename).
    """
    path = Path(path)
    if path.suffix.lower() not in (".png", ".tif", ".tiff"):
        raise ValueError(f"label images are written as .png (or .tif), got {path}")
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.size == 0:
        raise ImageShapeError(f"expected a non-empty 2-D label image, got shape {labels.shape}")
    if labels.dtype == np.bool_ or not np.issubdtype(labels.dtype, np.integer):
        raise ImageShapeError(f"label image must have an integer dtype, got {labels.dtype}")
    low, high = int(labels.min()), int(labels.max())
    if low < 0:
        raise ImageShapeError(f"label image holds negative labels (min {low})")
    if high > _MAX_LABEL:
        raise ImageShapeError(
            f"label {high} does not fit a 16-bit label image (max {_MAX_LABEL}); relabel "
            "(e.g. skimage.segmentation.relabel_sequential) or split the image"
        )
    return _atomic_imwrite(path, labels.astype(np.uint16))

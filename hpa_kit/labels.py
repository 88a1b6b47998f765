"""The 19 classes of the HPA single-cell task and the ``"8|5|0"`` label strings.

A label string lists class indices separated by ``|``, as in the competition's ``train.csv``.
A multi-hot vector is a length-19 ``float32`` array with 1.0 at each listed class.

>>> parse_labels("8|5|0")[[0, 5, 8]].tolist()
[1.0, 1.0, 1.0]
>>> format_labels(parse_labels("8|5|0"))
'0|5|8'
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "CLASS_NAMES",
    "NEGATIVE",
    "NUM_CLASSES",
    "SHORT_NAMES",
    "LabelError",
    "class_index",
    "format_labels",
    "parse_labels",
    "parse_label_list",
]

CLASS_NAMES: tuple[str, ...] = (
    "Nucleoplasm",
    "Nuclear membrane",
    "Nucleoli",
    "Nucleoli fibrillar center",
    "Nuclear speckles",
    "Nuclear bodies",
    "Endoplasmic reticulum",
    "Golgi apparatus",
    "Intermediate filaments",
    "Actin filaments",
    "Microtubules",
    "Mitotic spindle",
    "Centrosome",
    "Plasma membrane",
    "Mitochondria",
    "Aggresome",
    "Cytosol",
    "Vesicles and punctate cytosolic patterns",
    "Negative",
)
NUM_CLASSES: int = len(CLASS_NAMES)
NEGATIVE: int = 18

SHORT_NAMES: tuple[str, ...] = (
    "Nucleopl.",
    "Nucl.memb.",
    "Nucleoli",
    "Fib.center",
    "Speckles",
    "Nucl.bod.",
    "ER",
    "Golgi",
    "Int.fil.",
    "Actin",
    "Microtub.",
    "Spindle",
    "Centros.",
    "Pl.memb.",
    "Mitoch.",
    "Aggresome",
    "Cytosol",
    "Vesicles",
    "Negative",
)
"""Names of :data:`CLASS_NAMES` short enough to write on a cell in a picture: distinct, at
most 10 ASCII characters, no spaces (``SHORT_NAMES[13]`` is ``"Pl.memb."``, plasma
membrane)."""


class LabelError(ValueError):
    """A label string or vector that does not describe classes 0..18."""


_CLASS_BY_TEXT = {str(c): c for c in range(NUM_CLASSES)}


def class_index(text: str) -> int | None:
    """The class a token names when written plainly (``"0"`` .. ``"18"``), else None.

    ``int()`` would also read ``"+1"``, ``"01"``, ``"1_0"`` or non-ASCII digits such as
    ``"\u0661"``; the competition's files hold none of them.

    >>> class_index("18"), class_index("19"), class_index("+1"), class_index("01")
    (18, None, None, None)
    """
    return _CLASS_BY_TEXT.get(text)


def parse_label_list(text: str) -> list[int]:
    """Class indices of a label string, in the order first written.

    A class written twice counts once: the real ``train.csv`` has 146 rows such as ``13|13``.

    >>> parse_label_list("8|5|0")
    [8, 5, 0]
    >>> parse_label_list(" 13|0|13 ")
    [13, 0]
    """
    if not isinstance(text, str):
        raise LabelError(f"label string must be str, got {type(text).__name__}: {text!r}")
    parts = text.strip().split("|")
    if parts == [""]:
        raise LabelError("empty label string; an image needs at least one class")
    out: list[int] = []
    for part in parts:
        token = part.strip()
        value = class_index(token)
        if value is None and token.isascii() and token.isdigit() and token[0] != "0":
            raise LabelError(f"class {token} in label string {text!r} is out of range 0..18")
        if value is None:
            raise LabelError(f"bad class {token!r} in label string {text!r}: expected 0..18")
        if value not in out:
            out.append(value)
    return out


def parse_labels(text: str) -> np.ndarray:
    """Multi-hot float32 vector of length 19 for a label string such as ``"8|5|0"``.

    >>> parse_labels("18").nonzero()[0].tolist()
    [18]
    """
    vector = np.zeros(NUM_CLASSES, dtype=np.float32)
    vector[parse_label_list(text)] = 1.0
    return vector


def format_labels(vector: Sequence[float] | np.ndarray, *, threshold: float = 0.5) -> str:
    """Label string (ascending indices) of a multi-hot or probability vector.

    >>> format_labels([0.9] + [0.0] * 17 + [0.6])
    '0|18'
    """
    array = np.asarray(vector, dtype=np.float64)
    if array.shape != (NUM_CLASSES,):
        raise LabelError(f"label vector must have shape ({NUM_CLASSES},), got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise LabelError("label vector contains NaN or infinity")
    indices = np.flatnonzero(array >= threshold)
    if indices.size == 0:
        raise LabelError(f"no class reaches the threshold {threshold}")
    return "|".join(str(int(i)) for i in indices)

"""hpa_kit: a toolkit for the Human Protein Atlas single-cell classification task.

Importing the package is cheap: torch, timm, pycocotools and hpacellseg are only imported
by the modules that need them. The names a notebook needs are here, loaded on first use::

    import hpa_kit
    report = hpa_kit.predict_folder(images, sample, checkpoints, out="submission.csv")

``read_image``, ``ClassicalSegmenter``, ``NetworkSegmenter``, ``predict_folder``,
``PredictOptions``, ``encode_label_image``, ``validate_submission``, ``score_submission``,
``fit``, ``TrainConfig``, ``load_classifier``. The modules, one subject each:

- :mod:`hpa_kit.labels` the 19 classes and ``"8|5|0"`` label strings
- :mod:`hpa_kit.io` channel PNGs (8/16-bit) and label images
- :mod:`hpa_kit.rle` the competition's mask encoding
- :mod:`hpa_kit.submission` building, writing and validating ``submission.csv``
- :mod:`hpa_kit.metric` the competition mAP (IoU 0.6, the host's rules)
- :mod:`hpa_kit.segment` quarter-scale cell segmentation (hpacellseg networks or classical)
- :mod:`hpa_kit.crop`, :mod:`hpa_kit.tta`, :mod:`hpa_kit.model` cell crops, test-time
  augmentation, self-describing classifier checkpoints
- :mod:`hpa_kit.predict` the end-to-end, resumable predictor
- :mod:`hpa_kit.folds`, :mod:`hpa_kit.prepare`, :mod:`hpa_kit.download` training data
- :mod:`hpa_kit.dataset`, :mod:`hpa_kit.augment`, :mod:`hpa_kit.losses`, :mod:`hpa_kit.train`
  the training loop (single process or torchrun)
- :mod:`hpa_kit.synth`, :mod:`hpa_kit.viz`, :mod:`hpa_kit.demo` synthetic data with cell-level
  truth, pictures, the end-to-end demo
- :mod:`hpa_kit.delivery` Kaggle kernels and the wheels dataset
- :mod:`hpa_kit.errors` the expected failures and their exit statuses
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# The names a notebook needs, resolved on first use (so `import hpa_kit` imports no torch).
_LAZY: dict[str, str] = {
    "read_image": "hpa_kit.io",
    "ClassicalSegmenter": "hpa_kit.segment",
    "NetworkSegmenter": "hpa_kit.segment",
    "PredictOptions": "hpa_kit.predict",
    "predict_folder": "hpa_kit.predict",
    "encode_label_image": "hpa_kit.rle",
    "validate_submission": "hpa_kit.submission",
    "score_submission": "hpa_kit.metric",
    "TrainConfig": "hpa_kit.train",
    "fit": "hpa_kit.train",
    "load_classifier": "hpa_kit.model",
}

__all__ = [
    "ClassicalSegmenter",
    "NetworkSegmenter",
    "PredictOptions",
    "TrainConfig",
    "__version__",
    "encode_label_image",
    "fit",
    "load_classifier",
    "predict_folder",
    "read_image",
    "score_submission",
    "validate_submission",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and editors only
    from hpa_kit.io import read_image
    from hpa_kit.metric import score_submission
    from hpa_kit.model import load_classifier
    from hpa_kit.predict import PredictOptions, predict_folder
    from hpa_kit.rle import encode_label_image
    from hpa_kit.segment import ClassicalSegmenter, NetworkSegmenter
    from hpa_kit.submission import validate_submission
    from hpa_kit.train import TrainConfig, fit


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hpa_kit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

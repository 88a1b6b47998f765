"""hpa_kit: a toolkit for the Human Protein Atlas single-cell classification task.

Importing the package is cheap: torch, timm, pycocotools and hpacellseg are only imported
by the modules that need them. The modules, one subject each:

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
"""

__version__ = "0.1.0"

__all__ = ["__version__"]

"""hpa_kit: a toolkit for the Human Protein Atlas single-cell classification task.

Importing the package is cheap: torch, timm, pycocotools and hpacellseg are only imported
by the modules that need them. The main entry points:

- :mod:`hpa_kit.labels` class names and label strings
- :mod:`hpa_kit.io` reading channel PNGs and label images
- :mod:`hpa_kit.rle` the competition's mask encoding
- :mod:`hpa_kit.submission` building, writing and validating ``submission.csv``
- :mod:`hpa_kit.metric` the competition mAP
- :mod:`hpa_kit.segment` quarter-scale cell segmentation
- :mod:`hpa_kit.predict` the end-to-end predictor
- :mod:`hpa_kit.train` the training loop
"""

__version__ = "0.1.0"

__all__ = ["__version__"]

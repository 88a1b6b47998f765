"""Cell segmentation: prediction maps -> nuclei and cell label images, at any scale.

Data contract
-------------
- Images are HxWxC uint8 in RGBY order (``hpa_kit.io.CHANNELS``: red, green, blue, yellow).
- Prediction maps are HxWx3 uint8 at a reduced ``scale`` of the image (``reduced_shape``):
  softmax x 255 with channel 0 zeroed, channel 1 = touching-border probability, channel 2 =
  foreground (nucleus or cell) probability, as HPA-Cell-Segmentation's networks give them.
- Label images are 2-D int32, 0 = background, 1..N = cells; a nucleus carries its cell's id.
  Coordinates are (row, col).
- Labelling constants are declared once, in full-resolution pixels (of a 2048 px HPA image),
  in :class:`SegConfig`; ``SegConfig.sizes()`` derives them for the scale of the maps and the
  image's ``pixel_size`` (full-resolution pixels per image pixel: 2 for a 1024 px cache of
  2048 px images): areas x (scale / pixel_size)**2, radii x scale / pixel_size. The segmenters
  and :func:`classical_maps` take the same ``pixel_size`` (default 1.0).

Two producers of maps: the HPA networks (:func:`predict_maps`, torch imported lazily) and a
weights-free :func:`classical_maps`. Both feed :func:`label_cells` unchanged;
:func:`maps_to_labels` labels at the maps' scale and upsamples to the image size. The segmenter
objects split the work the way a predictor needs it: ``.maps(images)`` on the main process
(GPU), ``.labels(nuclei_maps, cell_maps, shape)`` in CPU workers (or send ``.config`` to the
workers and call :func:`maps_to_labels` there). :func:`match_labels` measures a segmentation
against a reference (precision, recall, F1 at an IoU threshold, mean matched IoU);
:func:`match_dataset` pools it over many images.

>>> from hpa_kit.segment import ClassicalSegmenter
>>> import numpy as np
>>> image = np.zeros((512, 512, 4), np.uint8)
>>> rows, cols = np.ogrid[:512, :512]
>>> image[..., 0][(rows - 256) ** 2 + (cols - 256) ** 2 < 150**2] = 60  # cell body (red)
>>> image[..., 2][(rows - 256) ** 2 + (cols - 256) ** 2 < 50**2] = 200  # nucleus (blue)
>>> (nuclei, cells), = ClassicalSegmenter(scale=0.25).segment([image])
>>> cells.shape, cells.dtype.name, int(cells.max()), int(cells[256, 256]), int(nuclei[256, 256])
((512, 512), 'int32', 1, 1, 1)
"""

from hpa_kit.segment._config import (
    ScaledSizes,
    SegConfig,
    reduced_shape,
    scaled_area,
    scaled_cut,
    scaled_radius,
)
from hpa_kit.segment._folder import segment_folder
from hpa_kit.segment._label import label_cells, maps_to_labels, upsample_labels
from hpa_kit.segment._match import Matching, match_dataset, match_labels
from hpa_kit.segment._segmenter import (
    ClassicalSegmenter,
    DeviceStage,
    NetworkSegmenter,
    Segmenter,
    device_stage,
    make_segmenter,
    segment,
)
from hpa_kit.segment.classical import ClassicalConfig, classical_maps
from hpa_kit.segment.networks import (
    WEIGHT_FILES,
    load_segmentation_models,
    predict_maps,
)

__all__ = [
    "WEIGHT_FILES",
    "ClassicalConfig",
    "ClassicalSegmenter",
    "DeviceStage",
    "Matching",
    "NetworkSegmenter",
    "ScaledSizes",
    "SegConfig",
    "Segmenter",
    "classical_maps",
    "device_stage",
    "label_cells",
    "load_segmentation_models",
    "make_segmenter",
    "maps_to_labels",
    "match_dataset",
    "match_labels",
    "predict_maps",
    "reduced_shape",
    "scaled_area",
    "scaled_cut",
    "scaled_radius",
    "segment",
    "segment_folder",
    "upsample_labels",
]

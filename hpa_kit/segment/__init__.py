"""Cell segmentation: prediction maps -> nuclei and cell label images, at any scale.

Data contract
-------------
- Images are HxWxC uint8 in RGBY order (``hpa_kit.io.CHANNELS``: red, green, blue, yellow).
- Prediction maps are HxWx3 uint8 at a reduced ``scale`` of the image (``reduced_shape``):
  softmax x 255 with channel 0 zeroed, channel 1 = touching-border probability, channel 2 =
  foreground (nucleus or cell) probability, as HPA-Cell-Segmentation's networks give them.
- Label images are 2-D int32, 0 = background, 1..N = cells; a nucleus carries its cell's id.
  Coordinates are (row, col).
- Labelling constants are declared once, in full-resolution pixels, in :class:`SegConfig`;
  ``SegConfig.sizes()`` derives them for the scale of the maps.

Two producers of maps: the HPA networks (:func:`predict_maps`, torch imported lazily) and a
weights-free :func:`classical_maps`. Both feed :func:`label_cells` unchanged. The segmenter
objects split the work the way a predictor needs it: ``.maps(images)`` on the main process
(GPU), ``.labels(nuclei_maps, cell_maps, shape)`` in CPU workers.
"""

from hpa_kit.segment._config import (
    ScaledSizes,
    SegConfig,
    reduced_shape,
    scaled_area,
    scaled_cut,
    scaled_radius,
)
from hpa_kit.segment._label import label_cells, maps_to_labels, upsample_labels
from hpa_kit.segment._match import Matching, match_labels
from hpa_kit.segment._segmenter import ClassicalSegmenter, NetworkSegmenter, segment
from hpa_kit.segment.classical import classical_maps
from hpa_kit.segment.networks import (
    WEIGHT_FILES,
    load_segmentation_models,
    predict_maps,
)

__all__ = [
    "WEIGHT_FILES",
    "ClassicalSegmenter",
    "Matching",
    "NetworkSegmenter",
    "ScaledSizes",
    "SegConfig",
    "classical_maps",
    "label_cells",
    "load_segmentation_models",
    "maps_to_labels",
    "match_labels",
    "predict_maps",
    "reduced_shape",
    "scaled_area",
    "scaled_cut",
    "scaled_radius",
    "segment",
    "upsample_labels",
]

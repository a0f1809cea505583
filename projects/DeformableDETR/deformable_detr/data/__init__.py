"""Data: DETR's augmentation (dataset_mapper), one ground truth for training and
COCO evaluation (ground_truth), and the synthetic shapes dataset (synthetic),
registered in DatasetCatalog when this package is imported."""

from . import synthetic  # noqa: F401  (registers the datasets)
from .dataset_mapper import DetrDatasetMapper
from .ground_truth import DetrCOCOEvaluator, clean_boxes, detection_dataset_dicts

__all__ = ["DetrDatasetMapper", "DetrCOCOEvaluator", "clean_boxes", "detection_dataset_dicts"]

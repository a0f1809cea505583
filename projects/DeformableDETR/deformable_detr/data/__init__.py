"""Data: DETR's augmentation (dataset_mapper), one ground truth for training and
COCO evaluation (ground_truth), the synthetic shapes dataset (synthetic) and the
COCO-like shapes benchmark (shapes_benchmark), registered in DatasetCatalog when
this package is imported."""

from . import shapes_benchmark, synthetic  # noqa: F401  (register the datasets)
from .dataset_mapper import DetrDatasetMapper
from .ground_truth import DetrCOCOEvaluator, clean_boxes, detection_dataset_dicts

__all__ = ["DetrDatasetMapper", "DetrCOCOEvaluator", "clean_boxes", "detection_dataset_dicts"]

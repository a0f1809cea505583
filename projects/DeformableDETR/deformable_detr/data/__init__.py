"""Data: DETR's augmentation (dataset_mapper), one ground truth for training and
COCO evaluation (ground_truth), a training loader that resumes exactly
(resumable_loader), the synthetic shapes dataset (synthetic) and the COCO-like
shapes benchmark (shapes_benchmark), registered in DatasetCatalog when this
package is imported."""

from . import shapes_benchmark, synthetic  # noqa: F401  (register the datasets)
from .dataset_mapper import DetrDatasetMapper
from .ground_truth import DetrCOCOEvaluator, clean_boxes, detection_dataset_dicts
from .resumable_loader import build_resumable_train_loader

__all__ = [
    "DetrDatasetMapper",
    "DetrCOCOEvaluator",
    "build_resumable_train_loader",
    "clean_boxes",
    "detection_dataset_dicts",
]

"""Meta-architectures registered in detectron2's META_ARCH_REGISTRY: Deformable DETR,
DETR, and the set-prediction detector both are built on."""

from .deformable_detr import DeformableDETR
from .detr import DETR
from .set_prediction import SetPredictionDetector

__all__ = ["DETR", "DeformableDETR", "SetPredictionDetector"]

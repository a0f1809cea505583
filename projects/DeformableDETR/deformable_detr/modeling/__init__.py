"""The models: the DETR-family meta-architectures (meta_arch/), their transformers,
matcher, set criterion, position encoding and shared layers, backbones, and
test-time augmentation."""

from .meta_arch import DETR, DeformableDETR, SetPredictionDetector

__all__ = ["DETR", "DeformableDETR", "SetPredictionDetector"]

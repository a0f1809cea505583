"""Backbones beyond detectron2's plain ResNet: ResNeXt stages with deformable
convolutions on torchvision's op, the optimizer rules of Swin and ViT, and the
key converters of their public checkpoints."""

from .optim import LayerDecayLrFactor, detector_param_groups
from .resnet import TorchvisionDeformBottleneckBlock, TorchvisionDeformConv, make_resnet_stages

__all__ = [
    "LayerDecayLrFactor",
    "TorchvisionDeformBottleneckBlock",
    "TorchvisionDeformConv",
    "detector_param_groups",
    "make_resnet_stages",
]

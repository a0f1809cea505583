"""Backbones beyond detectron2's own: ResNet/ResNeXt stages with deformable
convolutions on torchvision's op (Swin and ViT are detectron2's and timm's)."""

from .resnet import TorchvisionDeformBottleneckBlock, TorchvisionDeformConv, make_resnet_stages

__all__ = ["TorchvisionDeformBottleneckBlock", "TorchvisionDeformConv", "make_resnet_stages"]

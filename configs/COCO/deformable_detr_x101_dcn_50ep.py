# Multi-scale Deformable DETR, 50 epochs on COCO, on
# ResNeXt-101 32x8d with deformable convolutions in res3-res5
# (the paper's strongest backbone; FAIR ImageNet weights, the offsets start at zero).
from ..common.models.backbones import X101_DCN
from .deformable_detr_x101_50ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone = X101_DCN
train.output_dir = "./output/deformable_detr_x101_dcn_50ep"

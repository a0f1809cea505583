# Multi-scale Deformable DETR, 50 epochs on COCO, on
# Swin-L, window 12 (official ImageNet-22k weights at 384).
from detectron2.config import LazyCall as L

from deformable_detr.backbones import detector_param_groups
from deformable_detr.optim import LrFactor

from ..common.models.backbones import SWIN_FEATURES, SWIN_L, SWIN_L_WEIGHTS
from .deformable_detr_r50_50ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone = SWIN_L
model.in_features = SWIN_FEATURES
# no weight decay on the backbone's norms and position tables
optimizer.params = L(detector_param_groups)(
    base_lr="${..lr}",
    weight_decay="${..weight_decay}",
    lr_factor_func=L(LrFactor)(backbone_multiplier=0.1, linear_proj_multiplier=0.1),
)
# SWIN_L_WEIGHTS, in detectron2's names:
#   tools/convert_backbone_checkpoint.py --source swin <downloaded file> swin_l_d2.pth
train.init_checkpoint = "swin_l_d2.pth"
train.output_dir = "./output/deformable_detr_swin_l_50ep"

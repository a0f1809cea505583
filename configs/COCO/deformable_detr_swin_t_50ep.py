# Multi-scale Deformable DETR, 50 epochs on COCO, on
# Swin-T (official ImageNet-1k weights).
from detectron2.config import LazyCall as L

from deformable_detr.solver.lr_factors import LrFactor
from deformable_detr.solver.param_groups import detector_param_groups

from ..common.models.backbones import SWIN_FEATURES, SWIN_T, SWIN_T_WEIGHTS
from .deformable_detr_r50_50ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone = SWIN_T
model.in_features = SWIN_FEATURES
# no weight decay on the backbone's norms and position tables
optimizer.params = L(detector_param_groups)(
    base_lr="${..lr}",
    weight_decay="${..weight_decay}",
    lr_factor_func=L(LrFactor)(backbone_multiplier=0.1, linear_proj_multiplier=0.1),
)
# SWIN_T_WEIGHTS, in detectron2's names:
#   tools/convert_backbone_checkpoint.py --source swin <downloaded file> swin_t_d2.pth
train.init_checkpoint = "swin_t_d2.pth"
train.output_dir = "./output/deformable_detr_swin_t_50ep"

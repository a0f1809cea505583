# Multi-scale Deformable DETR, 50 epochs on COCO, on
# Swin-L, window 12 (official ImageNet-22k weights at 384), with Swin-T's recipe.
from ..common.models.backbones import SWIN_L, SWIN_L_WEIGHTS
from .deformable_detr_swin_t_50ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone = SWIN_L
# SWIN_L_WEIGHTS, in detectron2's names:
#   tools/convert_backbone_checkpoint.py --source swin <downloaded file> swin_l_d2.pth
train.init_checkpoint = "swin_l_d2.pth"
train.output_dir = "./output/deformable_detr_swin_l_50ep"

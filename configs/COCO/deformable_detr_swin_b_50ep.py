# Multi-scale Deformable DETR, 50 epochs on COCO, on
# Swin-B (official ImageNet-22k weights), with Swin-T's recipe.
from ..common.models.backbones import SWIN_B, SWIN_B_WEIGHTS
from .deformable_detr_swin_t_50ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone = SWIN_B
# SWIN_B_WEIGHTS, in detectron2's names:
#   tools/convert_backbone_checkpoint.py --source swin <downloaded file> swin_b_d2.pth
train.init_checkpoint = "swin_b_d2.pth"
train.output_dir = "./output/deformable_detr_swin_b_50ep"

# Multi-scale Deformable DETR, 50 epochs on COCO, on
# ViT-B with ViTDet's simple feature pyramid (MAE weights).
from detectron2.config import LazyCall as L

from deformable_detr.solver.param_groups import LayerDecayLrFactor, detector_param_groups

from ..common.models.backbones import VIT_B, VIT_B_FEATURES, VIT_B_WEIGHTS
from .deformable_detr_r50_50ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone = VIT_B
model.in_features = VIT_B_FEATURES
# ViTDet's rules: layer-wise lr decay 0.7 over the 12 blocks (the pyramid at
# 1.0), lr 1e-4; no weight decay on the backbone's norms and position tables
optimizer.lr = 1e-4
optimizer.params = L(detector_param_groups)(
    base_lr="${..lr}",
    weight_decay="${..weight_decay}",
    lr_factor_func=L(LayerDecayLrFactor)(
        num_layers=12, lr_decay_rate=0.7, linear_proj_multiplier=0.1
    ),
)
# VIT_B_WEIGHTS, in detectron2's names:
#   tools/convert_backbone_checkpoint.py --source vit <downloaded file> vit_b_d2.pth
train.init_checkpoint = "vit_b_d2.pth"
train.output_dir = "./output/deformable_detr_vit_b_50ep"

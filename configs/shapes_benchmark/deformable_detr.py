# Multi-scale Deformable DETR on the shapes benchmark: the paper's model and
# recipe (focal loss, 300 queries, lr 2e-4, clipping 0.1) at the study's size.
from ..common.models.deformable_detr_r50 import model
from .base import (
    backbone,
    backbone_pretraining,
    dataloader,
    lr_multiplier,
    optimizer,
    set_transformer_size,
    train,
)

model.backbone = backbone
model = set_transformer_size(model)
model.num_feature_levels = 4
optimizer.lr = 2e-4
train.output_dir = "./output/shapes_benchmark/deformable_detr"

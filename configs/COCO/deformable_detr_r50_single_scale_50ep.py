# Single-scale Deformable DETR: res5 only, one feature level.
from .deformable_detr_r50_50ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone.out_features = ["res5"]
model.in_features = ["res5"]
model.num_feature_levels = 1
train.output_dir = "./output/deformable_detr_r50_single_scale_50ep"

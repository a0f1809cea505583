# Single-scale Deformable DETR on the shapes benchmark: res5 only, one level.
from .deformable_detr import dataloader, lr_multiplier, model, optimizer, train

model.backbone.out_features = ["res5"]
model.in_features = ["res5"]
model.num_feature_levels = 1
train.output_dir = "./output/shapes_benchmark/deformable_detr_single_scale"

# Single-scale Deformable DETR: the stride-32 level only.
# The backbone and its recipe: deformable_detr_vit_b_50ep.py.
from .deformable_detr_vit_b_50ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone.scale_factors = (0.5,)
model.in_features = ["p5"]
model.num_feature_levels = 1
train.output_dir = "./output/deformable_detr_vit_b_single_scale_50ep"

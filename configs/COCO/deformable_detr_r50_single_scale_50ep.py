# Single-scale Deformable DETR: the stride-32 level only.
from ..common.models.variants import single_scale
from .deformable_detr_r50_50ep import dataloader, lr_multiplier, model, optimizer, train

model = single_scale(model)
train.output_dir = "./output/deformable_detr_r50_single_scale_50ep"

# Single-scale Deformable DETR on the shapes benchmark: res5 only, one level.
from ..common.models.variants import single_scale
from .deformable_detr import dataloader, lr_multiplier, model, optimizer, train

model = single_scale(model)
train.output_dir = "./output/shapes_benchmark/deformable_detr_single_scale"

# Single-scale Deformable DETR: the stride-32 level only.
# The backbone and its recipe: deformable_detr_swin_t_50ep.py.
from ..common.models.variants import single_scale
from .deformable_detr_swin_t_50ep import dataloader, lr_multiplier, model, optimizer, train

model = single_scale(model)
train.output_dir = "./output/deformable_detr_swin_t_single_scale_50ep"

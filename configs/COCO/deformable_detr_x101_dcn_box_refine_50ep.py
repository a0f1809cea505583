# Deformable DETR with iterative bounding-box refinement.
# The backbone and its recipe: deformable_detr_x101_dcn_50ep.py.
from ..common.models.variants import box_refine
from .deformable_detr_x101_dcn_50ep import dataloader, lr_multiplier, model, optimizer, train

model = box_refine(model)
train.output_dir = "./output/deformable_detr_x101_dcn_box_refine_50ep"

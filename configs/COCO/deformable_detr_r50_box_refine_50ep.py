# Deformable DETR with iterative bounding-box refinement.
from ..common.models.variants import box_refine
from .deformable_detr_r50_50ep import dataloader, lr_multiplier, model, optimizer, train

model = box_refine(model)
train.output_dir = "./output/deformable_detr_r50_box_refine_50ep"

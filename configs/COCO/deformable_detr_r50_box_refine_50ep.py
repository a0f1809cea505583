# Deformable DETR with iterative bounding-box refinement.
from .deformable_detr_r50_50ep import dataloader, lr_multiplier, model, optimizer, train

model.with_box_refine = True
train.output_dir = "./output/deformable_detr_r50_box_refine_50ep"

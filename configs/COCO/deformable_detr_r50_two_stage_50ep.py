# Two-stage Deformable DETR (with iterative bounding-box refinement, as in the paper).
from .deformable_detr_r50_50ep import dataloader, lr_multiplier, model, optimizer, train

model.with_box_refine = True
model.two_stage = True
train.output_dir = "./output/deformable_detr_r50_two_stage_50ep"

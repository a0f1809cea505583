# Two-stage Deformable DETR (with box refinement, as in the paper).
# The backbone and its recipe: deformable_detr_x101_50ep.py.
from .deformable_detr_x101_50ep import dataloader, lr_multiplier, model, optimizer, train

model.with_box_refine = True
model.two_stage = True
train.output_dir = "./output/deformable_detr_x101_two_stage_50ep"

# Two-stage Deformable DETR (with iterative box refinement) on the shapes benchmark.
from .deformable_detr import dataloader, lr_multiplier, model, optimizer, train

model.with_box_refine = True
model.two_stage = True
train.output_dir = "./output/shapes_benchmark/deformable_detr_two_stage"

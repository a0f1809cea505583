# Two-stage Deformable DETR (with iterative box refinement) on the shapes benchmark.
from ..common.models.variants import two_stage
from .deformable_detr import dataloader, lr_multiplier, model, optimizer, train

model = two_stage(model)
train.output_dir = "./output/shapes_benchmark/deformable_detr_two_stage"

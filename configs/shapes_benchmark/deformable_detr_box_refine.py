# Deformable DETR with iterative bounding-box refinement on the shapes benchmark.
from ..common.models.variants import box_refine
from .deformable_detr import dataloader, lr_multiplier, model, optimizer, train

model = box_refine(model)
train.output_dir = "./output/shapes_benchmark/deformable_detr_box_refine"

# Two-stage Deformable DETR (with iterative bounding-box refinement, as in the paper).
from ..common.models.variants import two_stage
from .deformable_detr_r50_50ep import dataloader, lr_multiplier, model, optimizer, train

model = two_stage(model)
train.output_dir = "./output/deformable_detr_r50_two_stage_50ep"

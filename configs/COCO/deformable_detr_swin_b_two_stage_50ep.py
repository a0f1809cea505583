# Two-stage Deformable DETR (with iterative bounding-box refinement, as in the paper).
# The backbone and its recipe: deformable_detr_swin_b_50ep.py.
from ..common.models.variants import two_stage
from .deformable_detr_swin_b_50ep import dataloader, lr_multiplier, model, optimizer, train

model = two_stage(model)
train.output_dir = "./output/deformable_detr_swin_b_two_stage_50ep"

# Two-stage Deformable DETR (with iterative box refinement) on the NEON tree crowns.
from ..common.models.variants import two_stage
from .deformable_detr import (
    backbone_pretraining,
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    train,
)

model = two_stage(model)
train.output_dir = "./output/tree_crowns/runs/deformable_detr_two_stage"

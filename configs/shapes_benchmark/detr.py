# DETR on the shapes benchmark: single-scale C5, standard attention, 100 learned
# queries, softmax cross-entropy (no-object weight 0.1), DETR's lr 1e-4 and
# matcher costs, 10x the epochs of the Deformable DETR runs.
from ..common.models.detr_r50 import model
from .base import (
    EPOCHS,
    backbone,
    dataloader,
    optimizer,
    set_transformer_size,
    study_schedule,
    train,
)

model.backbone = backbone
model.backbone.out_features = ["res5"]
model = set_transformer_size(model)
optimizer.lr = 1e-4
train.epochs = 10 * EPOCHS
lr_multiplier = study_schedule(train.epochs)
train.output_dir = "./output/shapes_benchmark/detr"

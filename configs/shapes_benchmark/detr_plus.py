# "DETR+" on the shapes benchmark: DETR with Deformable DETR's focal loss and 300
# queries, on the Deformable DETR runs' schedule (the paper's DETR-DC5+ row without
# the dilation).
from ..common.models.detr_r50 import make_detr_plus
from .base import EPOCHS, study_schedule
from .detr import dataloader, model, optimizer, train

model = make_detr_plus(model)
train.epochs = EPOCHS
lr_multiplier = study_schedule(train.epochs)
train.output_dir = "./output/shapes_benchmark/detr_plus"

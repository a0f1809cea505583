# "DETR+" of the Deformable DETR paper's Table 1 (its DETR-DC5+ row without the
# dilation), R-50: DETR with Deformable DETR's focal loss and 300 queries, trained
# on Deformable DETR's 50-epoch schedule (total batch 32, lr divided by 10 after
# 40 epochs) at DETR's lr (1e-4, backbone 1e-5).
from detectron2.config import LazyCall as L

from deformable_detr.solver.schedule import epoch_step_multiplier

from ..common.models.detr_r50 import make_detr_plus
from .detr_r50_500ep import dataloader, model, optimizer, train

BATCH_SIZE = 32
dataloader.train.total_batch_size = BATCH_SIZE
model = make_detr_plus(model)
# optimizer.lr (1e-4) is the lr at batch 32, as in Deformable DETR's recipe
train.epochs, train.checkpoint_epochs, train.eval_epochs = 50, 1, 5
lr_multiplier = L(epoch_step_multiplier)(total_epochs=train.epochs, drop_epochs=40)
train.lr_reference_batch_size = BATCH_SIZE
train.output_dir = "./output/detr_plus_r50_50ep"

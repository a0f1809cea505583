# "DETR+" of the Deformable DETR paper's Table 1 (its DETR-DC5+ row without the
# dilation), R-50: DETR with Deformable DETR's focal loss and 300 queries, trained
# on Deformable DETR's 50-epoch schedule (total batch 32, lr divided by 10 after
# 40 epochs) at DETR's lr (1e-4, backbone 1e-5).
from ..common.coco_schedule import COCO_TRAIN_IMAGES, iterations, step_schedule
from ..common.models.detr_r50 import make_detr_plus
from .detr_r50_500ep import dataloader, model, optimizer, train

BATCH_SIZE = 32
dataloader.train.total_batch_size = BATCH_SIZE
model = make_detr_plus(model)
train.max_iter, lr_multiplier = step_schedule(
    total_epochs=50, drop_epochs=40, num_images=COCO_TRAIN_IMAGES, batch_size=BATCH_SIZE
)
train.checkpointer.period = iterations(1, COCO_TRAIN_IMAGES, BATCH_SIZE)
train.eval_period = iterations(5, COCO_TRAIN_IMAGES, BATCH_SIZE)
train.output_dir = "./output/detr_plus_r50_50ep"

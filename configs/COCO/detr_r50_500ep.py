# DETR, R-50, 500 epochs on COCO: the DETR paper's recipe (AdamW, lr 1e-4, backbone
# 1e-5, weight decay 1e-4, total batch 64, lr divided by 10 after 400 epochs,
# gradient clipping at 0.1), with the same data and augmentation as Deformable DETR.
from detectron2.data import MetadataCatalog

from ..common.coco_schedule import COCO_TRAIN_IMAGES, iterations, step_schedule
from ..common.data.coco_detr import dataloader
from ..common.models.detr_r50 import model
from ..common.optim import AdamW as optimizer
from ..common.train import train

BATCH_SIZE = 64
dataloader.train.total_batch_size = BATCH_SIZE
model.num_classes = len(MetadataCatalog.get("coco_2017_train").thing_classes)
optimizer.lr = 1e-4
optimizer.params.lr_factor_func.backbone_multiplier = 0.1
train.max_iter, lr_multiplier = step_schedule(
    total_epochs=500, drop_epochs=400, num_images=COCO_TRAIN_IMAGES, batch_size=BATCH_SIZE
)
train.init_checkpoint = "detectron2://ImageNetPretrained/torchvision/R-50.pkl"
train.checkpointer.period = iterations(1, COCO_TRAIN_IMAGES, BATCH_SIZE)
train.eval_period = iterations(10, COCO_TRAIN_IMAGES, BATCH_SIZE)
train.output_dir = "./output/detr_r50_500ep"

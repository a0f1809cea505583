# Multi-scale Deformable DETR, R-50, 50 epochs on COCO: the paper's recipe.
from detectron2.data import MetadataCatalog

from ..common.coco_schedule import COCO_TRAIN_IMAGES, iterations, step_schedule
from ..common.data.coco_detr import dataloader
from ..common.models.deformable_detr_r50 import model
from ..common.optim import AdamW as optimizer
from ..common.train import train

BATCH_SIZE = 32
dataloader.train.total_batch_size = BATCH_SIZE
# detectron2's contiguous class ids: 80 for COCO
model.num_classes = len(MetadataCatalog.get("coco_2017_train").thing_classes)
train.max_iter, lr_multiplier = step_schedule(
    total_epochs=50, drop_epochs=40, num_images=COCO_TRAIN_IMAGES, batch_size=BATCH_SIZE
)
train.init_checkpoint = "detectron2://ImageNetPretrained/torchvision/R-50.pkl"
train.checkpointer.period = iterations(1, COCO_TRAIN_IMAGES, BATCH_SIZE)
train.eval_period = iterations(5, COCO_TRAIN_IMAGES, BATCH_SIZE)
train.output_dir = "./output/deformable_detr_r50_50ep"

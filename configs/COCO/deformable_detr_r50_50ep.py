# Multi-scale Deformable DETR, R-50, 50 epochs on COCO: the paper's recipe.
from detectron2.config import LazyCall as L
from detectron2.data import MetadataCatalog

from deformable_detr.solver.schedule import epoch_step_multiplier

from ..common.data.coco_detr import dataloader
from ..common.models.deformable_detr_r50 import model
from ..common.optim import AdamW as optimizer
from ..common.train import train

BATCH_SIZE = 32
dataloader.train.total_batch_size = BATCH_SIZE
# detectron2's contiguous class ids: 80 for COCO
model.num_classes = len(MetadataCatalog.get("coco_2017_train").thing_classes)
# 50 epochs, lr / 10 after 40, checkpoints every epoch, evaluation every 5, at the
# batch of dataloader.train.total_batch_size (184,824 iterations of 32 images on
# train2017's 118,287); optimizer.lr is the lr at batch 32 (deformable_detr.solver.schedule)
train.epochs, train.checkpoint_epochs, train.eval_epochs = 50, 1, 5
train.max_iter = train.checkpointer.period = train.eval_period = None
lr_multiplier = L(epoch_step_multiplier)(total_epochs=train.epochs, drop_epochs=40)
train.lr_reference_batch_size = BATCH_SIZE
train.init_checkpoint = "detectron2://ImageNetPretrained/torchvision/R-50.pkl"
train.output_dir = "./output/deformable_detr_r50_50ep"

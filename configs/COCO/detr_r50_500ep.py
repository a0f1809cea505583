# DETR, R-50, 500 epochs on COCO: the DETR paper's recipe (AdamW, lr 1e-4, backbone
# 1e-5, weight decay 1e-4, total batch 64, lr divided by 10 after 400 epochs,
# gradient clipping at 0.1), with the same data and augmentation as Deformable DETR.
from detectron2.config import LazyCall as L
from detectron2.data import MetadataCatalog

from deformable_detr.solver.schedule import epoch_step_multiplier

from ..common.data.coco_detr import dataloader
from ..common.models.detr_r50 import model
from ..common.optim import AdamW as optimizer
from ..common.train import train

BATCH_SIZE = 64
dataloader.train.total_batch_size = BATCH_SIZE
model.num_classes = len(MetadataCatalog.get("coco_2017_train").thing_classes)
optimizer.lr = 1e-4
optimizer.params.lr_factor_func.backbone_multiplier = 0.1
# in epochs, at the batch of dataloader.train.total_batch_size (deformable_detr.solver.schedule):
# 924,118 iterations at batch 64; optimizer.lr is the lr at batch 64
train.epochs, train.checkpoint_epochs, train.eval_epochs = 500, 1, 10
train.max_iter = train.checkpointer.period = train.eval_period = None
lr_multiplier = L(epoch_step_multiplier)(total_epochs=train.epochs, drop_epochs=400)
train.lr_reference_batch_size = BATCH_SIZE
train.init_checkpoint = "detectron2://ImageNetPretrained/torchvision/R-50.pkl"
train.output_dir = "./output/detr_r50_500ep"

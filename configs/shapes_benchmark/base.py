# What every contestant of the shapes benchmark study shares: data, batch,
# backbone (ResNet-18 with batch norm, trained from scratch: nothing is
# downloaded), transformer width and depth, the schedule rule (constant lr, /10
# after 80% of the epochs, evaluation and a checkpoint every epoch) and the loop.
# Only what the papers vary differs between the configs of this directory.
from detectron2.config import LazyCall as L
from detectron2.modeling.backbone import BasicStem, ResNet
from fvcore.common.param_scheduler import MultiStepParamScheduler

from deformable_detr.study.plan import epoch_schedule as study_schedule

from ..common.data.shapes_benchmark import dataloader
from ..common.optim import AdamW as optimizer
from ..common.train import train

NUM_TRAIN_IMAGES = 1000  # deformable_detr.data.shapes_benchmark's default num_train
NUM_CLASSES = 8
HIDDEN_DIM = 128
NUM_HEADS = 4
NUM_LAYERS = 3  # encoder and decoder
DIM_FEEDFORWARD = 512

backbone = L(ResNet)(
    stem=L(BasicStem)(in_channels=3, out_channels=64, norm="BN"),
    stages=L(ResNet.make_default_stages)(depth=18, norm="BN"),
    out_features=["res3", "res4", "res5"],
    freeze_at=0,
)
# The papers' 0.1x backbone lr protects ImageNet features; this backbone starts
# from scratch and trains at the full lr in every contestant.
optimizer.params.lr_factor_func.backbone_multiplier = 1.0


def epoch_schedule(epochs: int, batch_size: int = 8, num_images: int = NUM_TRAIN_IMAGES):
    """(max_iter, iterations per epoch, lr_multiplier) of the study's schedule rule."""
    max_iter, per_epoch, drop = study_schedule(epochs, num_images, batch_size)
    return (
        max_iter,
        per_epoch,
        L(MultiStepParamScheduler)(values=[1.0, 0.1], milestones=[drop], num_updates=max_iter),
    )


EPOCHS = 10  # the Deformable DETR variants, DETR+ and Faster R-CNN; DETR gets 10x
train.max_iter, ITERS_PER_EPOCH, lr_multiplier = epoch_schedule(EPOCHS)
train.device = "cpu"
train.eval_period = ITERS_PER_EPOCH
train.checkpointer.period = ITERS_PER_EPOCH
train.checkpointer.max_to_keep = 1
train.log_period = 20

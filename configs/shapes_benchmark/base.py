# What every contestant of the shapes benchmark study shares: data, batch,
# backbone (a half-width ResNet-18 with batch norm, pretrained on the benchmark's
# object crops by tools/study.py: nothing is downloaded), transformer width and
# depth, the schedule rule (in epochs: constant lr, /10 after 80% of the epochs,
# evaluation and a checkpoint every epoch) and the loop. Only what the papers vary
# differs between the configs of this directory.
from detectron2.config import LazyCall as L
from detectron2.modeling.backbone import BasicStem, ResNet
from detectron2.modeling.backbone.resnet import BasicBlock

from deformable_detr.solver.schedule import epoch_step_multiplier

from ..common.backbone_pretraining import backbone_pretraining
from ..common.data.shapes_benchmark import TRAIN, VAL, dataloader
from ..common.optim import AdamW as optimizer
from ..common.train import train

NUM_CLASSES = 8
HIDDEN_DIM = 128
NUM_HEADS = 4
NUM_LAYERS = 3  # encoder and decoder
DIM_FEEDFORWARD = 512

# ResNet-18 at half width (32, 64, 128, 256 channels in res2..res5), batch norm
BACKBONE_WIDTH = 32
backbone = L(ResNet)(
    stem=L(BasicStem)(in_channels=3, out_channels=BACKBONE_WIDTH, norm="BN"),
    stages=[
        L(ResNet.make_stage)(
            block_class=BasicBlock,
            num_blocks=2,
            in_channels=BACKBONE_WIDTH * 2 ** max(i - 1, 0),
            out_channels=BACKBONE_WIDTH * 2**i,
            stride_per_block=[1 if i == 0 else 2, 1],
            norm="BN",
        )
        for i in range(4)
    ],
    out_features=["res3", "res4", "res5"],
    freeze_at=0,
)
# The papers start every model from an ImageNet-pretrained backbone; here every
# contestant starts from this backbone pretrained to classify the benchmark's training
# objects (and background crops) at 64x64 pixels: tools/study.py runs this before the
# first contestant and writes the file named by train.init_checkpoint, which loads into
# DETR-family models and into Faster R-CNN's feature pyramid alike.
PRETRAINED_BACKBONE = "./output/study/backbone/pretrained.pth"
# the papers' 0.1x lr on the pretrained backbone, in every contestant
optimizer.params.lr_factor_func.backbone_multiplier = 0.1


def set_transformer_size(model):
    """The study's transformer width and depth (and no dropout) on a DETR-family model config."""
    model.num_classes = NUM_CLASSES
    model.transformer.hidden_dim = HIDDEN_DIM
    model.transformer.num_heads = NUM_HEADS
    model.transformer.num_encoder_layers = NUM_LAYERS
    model.transformer.num_decoder_layers = NUM_LAYERS
    model.transformer.dim_feedforward = DIM_FEEDFORWARD
    model.transformer.dropout = 0.0
    model.position_embedding.num_pos_feats = HIDDEN_DIM // 2
    return model


# Batch 2 at the papers' learning rates: in a short schedule, more (smaller) steps
# train further for the same compute (docs/study.md). optimizer.lr is the lr at batch 2,
# scaled to another dataloader.train.total_batch_size (deformable_detr.solver.schedule).
BATCH_SIZE = 2
dataloader.train.total_batch_size = BATCH_SIZE
train.lr_reference_batch_size = BATCH_SIZE


def study_schedule(epochs: float):
    """lr_multiplier of the study's rule for a run of `epochs` (train.epochs): the lr
    divided by 10 after 80% of them."""
    return L(epoch_step_multiplier)(total_epochs=epochs, drop_epochs=0.8 * epochs)


# the Deformable DETR variants, DETR+ and Faster R-CNN; DETR gets 10x. Iterations follow
# from the generated training images at the batch (docs/study.md).
EPOCHS = 5
train.epochs, train.checkpoint_epochs, train.eval_epochs = EPOCHS, 1, 1
train.max_iter = train.checkpointer.period = train.eval_period = None
lr_multiplier = study_schedule(train.epochs)
train.device = "cpu"
train.init_checkpoint = PRETRAINED_BACKBONE
train.checkpointer.max_to_keep = 2
train.log_period = 20

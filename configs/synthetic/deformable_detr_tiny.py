# A small multi-scale Deformable DETR trained from scratch on the synthetic shapes
# dataset (registered by importing deformable_detr, generated when first loaded,
# under $D2EXT_DATASETS): the CPU demo of `make demo`.
from detectron2.config import LazyCall as L
from detectron2.data import MetadataCatalog, build_detection_test_loader
from detectron2.data import transforms as T
from detectron2.modeling.backbone import BasicStem, ResNet
from omegaconf import OmegaConf

from deformable_detr.data import (
    DetrCOCOEvaluator,
    DetrDatasetMapper,
    build_resumable_train_loader,
    clean_boxes,
    detection_dataset_dicts,
)
from deformable_detr.data.synthetic import DATASET_NAMES
from deformable_detr.solver.schedule import epoch_step_multiplier

from ..common.models.deformable_detr_r50 import model
from ..common.optim import AdamW as optimizer
from ..common.train import train

TRAIN, VAL = DATASET_NAMES
BATCH_SIZE = 8

# ResNet-18 with batch norm, trained from scratch (no download)
model.backbone = L(ResNet)(
    stem=L(BasicStem)(in_channels=3, out_channels=64, norm="BN"),
    stages=L(ResNet.make_default_stages)(depth=18, norm="BN"),
    out_features=["res3", "res4", "res5"],
    freeze_at=0,
)
model.num_classes = len(MetadataCatalog.get(TRAIN).thing_classes)
model.num_queries = 30
model.num_feature_levels = 3
model.test_topk = 30
model.transformer.hidden_dim = 128
model.transformer.num_heads = 4
model.transformer.num_encoder_layers = 3
model.transformer.num_decoder_layers = 3
model.transformer.dim_feedforward = 512
model.transformer.dropout = 0.0
model.position_embedding.num_pos_feats = 64

optimizer.params.lr_factor_func.backbone_multiplier = 1.0  # no pretrained backbone to protect
optimizer.lr = 4e-4

dataloader = OmegaConf.create()
dataloader.train = L(build_resumable_train_loader)(
    dataset=L(clean_boxes)(
        dataset_dicts=L(detection_dataset_dicts)(names=TRAIN, filter_empty=False),
        dataset_name=TRAIN,
    ),
    mapper=L(DetrDatasetMapper)(
        is_train=True,
        augmentation=[L(T.RandomFlip)()],
        augmentation_with_crop=None,
        image_format="RGB",
    ),
    total_batch_size=BATCH_SIZE,
    num_workers=1,
)
dataloader.test = L(build_detection_test_loader)(
    dataset=L(detection_dataset_dicts)(names=VAL, filter_empty=False),
    mapper=L(DetrDatasetMapper)(
        is_train=False, augmentation=[], augmentation_with_crop=None, image_format="RGB"
    ),
    num_workers=1,
)
dataloader.evaluator = L(DetrCOCOEvaluator)(dataset_name=VAL)

# 4.5 epochs (1125 iterations at batch 8), lr / 10 after 4, evaluation at the end;
# optimizer.lr is the lr at batch 8 (deformable_detr.solver.schedule). Its time and AP
# on a CPU: docs/benchmarks.md
train.epochs, train.max_iter = 4.5, None
lr_multiplier = L(epoch_step_multiplier)(total_epochs=train.epochs, drop_epochs=4)
train.lr_reference_batch_size = BATCH_SIZE
train.device = "cpu"
train.eval_period = 0
train.checkpointer.period = 500
train.checkpointer.max_to_keep = 2
train.log_period = 20
train.output_dir = "./output/synthetic_tiny"

# What every contestant of the tree-crown experiment shares (tools/tree_crowns.py,
# docs/real_images.md): the NEON training image cut into 400-pixel tiles, the whole
# validation image evaluated by sliced inference at its own resolution, the shapes
# study's half-width ResNet-18 pretrained on the training image's crown crops (no
# ImageNet), batch 2, AdamW with the lr / 10 after 80% of the epochs, seed 0.
import os

from detectron2.config import LazyCall as L
from detectron2.data import transforms as T

from deformable_detr.data import DetrDatasetMapper
from deformable_detr.data.neon_trees import neon_trees_root
from deformable_detr.evaluation import BoxPrecisionRecallEvaluator

from ..common.backbone_pretraining import backbone_pretraining
from ..common.data.custom_coco import dataloader
from ..shapes_benchmark.base import optimizer, study_schedule, train

ROOT = neon_trees_root()  # $D2EXT_DATASETS/neon_trees (make neon-trees)
# the training tiles (tools/tree_crowns.py writes them with tools/tile_dataset.py's rule):
# windows of 400 pixels sharing 100, a crown cut by a window kept when half of it is inside
TILING = dict(tile_size=400, overlap=100, min_fraction=0.5)
TILES = os.path.join(ROOT, "tiles_{tile_size}_{overlap}".format(**TILING))

dataloader.train.dataset.update(
    name="neon_trees_train_tiles",
    json_file=os.path.join(TILES, "train.json"),
    image_root=os.path.join(TILES, "images"),
)
dataloader.test.dataset.update(
    name="neon_trees_val",
    json_file=os.path.join(ROOT, "val.json"),
    image_root=os.path.join(ROOT, "images"),
)
# aerial views: both flips, scale jitter around the tiles' own resolution, no crop
dataloader.train.mapper = L(DetrDatasetMapper)(
    is_train=True,
    augmentation=[
        L(T.RandomFlip)(horizontal=True, vertical=False),
        L(T.RandomFlip)(horizontal=False, vertical=True),
        L(T.ResizeShortestEdge)(
            short_edge_length=[320, 352, 384, 416, 448, 480], max_size=800, sample_style="choice"
        ),
    ],
    augmentation_with_crop=None,
    image_format="RGB",
)
# windows at the image's resolution (sliced inference reads the whole image)
dataloader.test.mapper = L(DetrDatasetMapper)(
    is_train=False, augmentation=[], augmentation_with_crop=None, image_format="RGB"
)
dataloader.train.total_batch_size = 2
dataloader.train.num_workers = dataloader.test.num_workers = 1
# the validation image has 279 crowns: COCO AP counts up to 1000 detections per image;
# beside it, DeepForest's box precision and recall (IoU > 0.4, scores >= 0.1)
dataloader.evaluator.max_dets_per_image = 1000
dataloader.evaluator = [
    dataloader.evaluator,
    L(BoxPrecisionRecallEvaluator)(
        dataset_name=dataloader.evaluator.dataset_name, iou_threshold=0.4, score_threshold=0.1
    ),
]
train.sliced_inference.update(enabled=True, window_size=400, overlap=100, merge="nms")

# the pretraining crops: the training tiles' crowns and background squares no larger
# than the largest crowns (a larger square holds many small crowns, each under a tenth
# of it); accuracy on the validation image
backbone_pretraining.update(epochs=20, backgrounds_per_image=8, max_background_side=128)
PRETRAINED_BACKBONE = "./output/tree_crowns/backbone/pretrained.pth"

# The backbone trains at the full lr: pretrained on one image's crops, it is no ImageNet
# backbone to protect, and at the papers' 0.1x it barely moves in a run this short
# (Faster R-CNN reached AP50 14.6 after 24 epochs with it; docs/real_images.md).
optimizer.params.lr_factor_func.backbone_multiplier = 1.0

EPOCHS = 24
train.epochs, train.checkpoint_epochs, train.eval_epochs = EPOCHS, 4, 4
lr_multiplier = study_schedule(train.epochs)
train.init_checkpoint = PRETRAINED_BACKBONE
train.seed = 0
train.log_period = 20


def for_trees(model):
    """A study contestant's model for crowns: classes from the JSON, up to 300
    detections per 400-pixel window (about 100 crowns fit in one)."""
    if "roi_heads" in model:  # Faster R-CNN
        model.roi_heads.num_classes = None
        model.roi_heads.box_predictor.test_topk_per_image = 300
        model.roi_heads.batch_size_per_image = 256
    else:
        model.num_classes = None
        model.num_queries = 300
        model.test_topk = 300
    return model

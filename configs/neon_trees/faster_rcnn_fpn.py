# detectron2's Faster R-CNN + FPN on the NEON tree crowns: the shapes study's model
# (FPN width 128, anchors of 8 to 128 pixels for crowns of 8 to 106) with 256 RoIs
# sampled per image (a tile holds up to about 100 crowns), lr 2e-4, no clipping.
from ..shapes_benchmark.faster_rcnn_fpn import model
from .base import backbone_pretraining, dataloader, for_trees, lr_multiplier, optimizer, train

model = for_trees(model)
optimizer.lr = 2e-4
train.clip_max_norm = 0.0
train.output_dir = "./output/tree_crowns/runs/faster_rcnn_fpn"

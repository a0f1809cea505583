# Multi-scale Deformable DETR on the NEON tree crowns: the shapes study's model
# (3+3 layers of 128 channels, 300 queries, focal loss, lr 2e-4) on the crown tiles.
from ..shapes_benchmark.deformable_detr import model
from .base import backbone_pretraining, dataloader, for_trees, lr_multiplier, optimizer, train

model = for_trees(model)
optimizer.lr = 2e-4
train.output_dir = "./output/tree_crowns/runs/deformable_detr"

# The synthetic demo model trained at several sizes (shorter side 112 to 176 pixels,
# about the images' own 128 to 160), the setting in which test-time augmentation at
# several sizes pays: evaluate with train.test_aug.enabled=True (sizes 128 and 160,
# each with a horizontal flip).
from detectron2.config import LazyCall as L
from detectron2.data import transforms as T

from .deformable_detr_tiny import dataloader, lr_multiplier, model, optimizer, train

dataloader.train.mapper.augmentation = [
    L(T.ResizeShortestEdge)(
        short_edge_length=(112, 128, 144, 160, 176), max_size=320, sample_style="choice"
    ),
    L(T.RandomFlip)(),
]
train.test_aug.update(min_sizes=[128, 160], max_size=320, flip=True)
train.output_dir = "./output/synthetic_tiny_multiscale"

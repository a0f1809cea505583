# Multi-scale Deformable DETR, 50 epochs on COCO, on
# ResNeXt-101 32x8d (detectron2's FAIR ImageNet weights, BGR input).
from ..common.models.backbones import BGR_MEAN, FAIR_STD, X101, X101_WEIGHTS
from .deformable_detr_r50_50ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone = X101
model.pixel_mean, model.pixel_std = BGR_MEAN, FAIR_STD
dataloader.train.mapper.image_format = "BGR"
dataloader.test.mapper.image_format = "BGR"
train.init_checkpoint = X101_WEIGHTS
train.output_dir = "./output/deformable_detr_x101_50ep"

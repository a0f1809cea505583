# Multi-scale Deformable DETR, 50 epochs on COCO, on
# R-101 (detectron2's MSRA ImageNet weights, BGR input).
from ..common.models.backbones import BGR_MEAN, MSRA_STD, R101, R101_WEIGHTS
from .deformable_detr_r50_50ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone = R101
model.pixel_mean, model.pixel_std = BGR_MEAN, MSRA_STD
dataloader.train.mapper.image_format = "BGR"
dataloader.test.mapper.image_format = "BGR"
train.init_checkpoint = R101_WEIGHTS
train.output_dir = "./output/deformable_detr_r101_50ep"

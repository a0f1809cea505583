# Multi-scale Deformable DETR on the shapes benchmark: the paper's model and
# recipe (focal loss, 300 queries, lr 2e-4, clipping 0.1) at the study's size.
from ..common.models.deformable_detr_r50 import model
from .base import (
    DIM_FEEDFORWARD,
    HIDDEN_DIM,
    NUM_CLASSES,
    NUM_HEADS,
    NUM_LAYERS,
    backbone,
    dataloader,
    lr_multiplier,
    optimizer,
    train,
)

model.backbone = backbone
model.num_classes = NUM_CLASSES
model.num_feature_levels = 4
model.transformer.hidden_dim = HIDDEN_DIM
model.transformer.num_heads = NUM_HEADS
model.transformer.num_encoder_layers = NUM_LAYERS
model.transformer.num_decoder_layers = NUM_LAYERS
model.transformer.dim_feedforward = DIM_FEEDFORWARD
model.transformer.dropout = 0.0
model.position_embedding.num_pos_feats = HIDDEN_DIM // 2
optimizer.lr = 2e-4
train.output_dir = "./output/shapes_benchmark/deformable_detr"

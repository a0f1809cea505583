# DETR on the shapes benchmark: single-scale C5, standard attention, 100 learned
# queries, softmax cross-entropy (no-object weight 0.1), DETR's lr 1e-4 and
# matcher costs, 10x the epochs of the Deformable DETR runs.
from ..common.models.detr_r50 import model
from .base import (
    DIM_FEEDFORWARD,
    EPOCHS,
    HIDDEN_DIM,
    NUM_CLASSES,
    NUM_HEADS,
    NUM_LAYERS,
    backbone,
    dataloader,
    epoch_schedule,
    optimizer,
    train,
)

model.backbone = backbone
model.backbone.out_features = ["res5"]
model.num_classes = NUM_CLASSES
model.transformer.hidden_dim = HIDDEN_DIM
model.transformer.num_heads = NUM_HEADS
model.transformer.num_encoder_layers = NUM_LAYERS
model.transformer.num_decoder_layers = NUM_LAYERS
model.transformer.dim_feedforward = DIM_FEEDFORWARD
model.transformer.dropout = 0.0
model.position_embedding.num_pos_feats = HIDDEN_DIM // 2
optimizer.lr = 1e-4
train.max_iter, _, lr_multiplier = epoch_schedule(10 * EPOCHS)
train.output_dir = "./output/shapes_benchmark/detr"

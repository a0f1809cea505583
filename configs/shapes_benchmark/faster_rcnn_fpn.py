# Faster R-CNN + FPN from detectron2's own modeling on the shapes benchmark: the
# study's backbone, FPN width = the transformers' hidden_dim, anchors of 8 to 128
# pixels for objects of 10 to 190, the study's data, optimizer (AdamW, lr 2e-4)
# and schedule; no gradient clipping (detectron2's default).
from detectron2.model_zoo import get_config

from .base import HIDDEN_DIM, NUM_CLASSES, backbone, dataloader, lr_multiplier, optimizer, train

model = get_config("common/models/mask_rcnn_fpn.py").model
model.backbone.bottom_up = backbone
model.backbone.bottom_up.out_features = ["res2", "res3", "res4", "res5"]
model.backbone.out_channels = HIDDEN_DIM
model.backbone.norm = ""
model.proposal_generator.head.in_channels = HIDDEN_DIM
model.roi_heads.box_head.input_shape.channels = HIDDEN_DIM
model.proposal_generator.anchor_generator.sizes = [[8], [16], [32], [64], [128]]
model.proposal_generator.post_nms_topk = (1000, 500)
model.roi_heads.num_classes = NUM_CLASSES
model.roi_heads.batch_size_per_image = 128  # RoIs sampled per image (512 on COCO): ~7 objects here
model.roi_heads.mask_in_features = None
model.roi_heads.mask_pooler = None
model.roi_heads.mask_head = None
model.roi_heads.box_head.fc_dims = [4 * HIDDEN_DIM, 4 * HIDDEN_DIM]
model.roi_heads.box_predictor.input_shape.channels = 4 * HIDDEN_DIM
model.input_format = "RGB"
model.pixel_mean = [123.675, 116.280, 103.530]
model.pixel_std = [58.395, 57.120, 57.375]
optimizer.lr = 2e-4
train.clip_max_norm = 0.0
train.output_dir = "./output/shapes_benchmark/faster_rcnn_fpn"

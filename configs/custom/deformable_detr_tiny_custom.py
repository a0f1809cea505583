# The CPU-sized model of configs/synthetic/deformable_detr_tiny.py (ResNet-18, 3+3
# layers of 128 channels, 30 queries) on your COCO-format dataset, given by overrides:
#   dataloader.train.dataset.json_file=train.json dataloader.train.dataset.image_root=images/
#   dataloader.test.dataset.json_file=val.json dataloader.test.dataset.image_root=images/
# Images are resized to a shortest edge of 128-160 pixels (at most 256 long). Start
# from a checkpoint of the synthetic demo (train.init_checkpoint=output/synthetic_tiny/
# model_final.pth: the class heads are re-initialised for your classes) or from scratch.
from detectron2.config import LazyCall as L
from detectron2.data import transforms as T

from ..common.backbone_pretraining import backbone_pretraining
from ..common.data.custom_coco import dataloader
from ..synthetic.deformable_detr_tiny import lr_multiplier, model, optimizer, train

dataloader.train.mapper.augmentation = [
    L(T.RandomFlip)(),
    L(T.ResizeShortestEdge)(short_edge_length=[128, 144, 160], max_size=256, sample_style="choice"),
]
dataloader.train.mapper.augmentation_with_crop = None
dataloader.test.mapper.augmentation = [L(T.ResizeShortestEdge)(short_edge_length=160, max_size=256)]
dataloader.train.total_batch_size = train.lr_reference_batch_size  # 8
dataloader.train.num_workers = dataloader.test.num_workers = 1
model.num_classes = None  # from the JSON
train.checkpointer.period = None
train.checkpoint_epochs = train.eval_epochs = 1
train.eval_period = None
train.output_dir = "./output/tiny_custom"

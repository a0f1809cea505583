# The paper's COCO recipe (multi-scale Deformable DETR, R-50, AdamW, 50 epochs, lr / 10
# after 40) on your COCO-format dataset, given by overrides alone:
#   dataloader.train.dataset.json_file=train.json dataloader.train.dataset.image_root=images/
#   dataloader.test.dataset.json_file=val.json dataloader.test.dataset.image_root=images/
# The classes are the JSON's categories. Start from converted COCO weights
# (train.init_checkpoint=model_coco.pth: the class heads are re-initialised for your
# classes, the rest loads) or from ImageNet (the default). Other variants:
# model.with_box_refine=True (+ iterative box refinement), model.with_box_refine=True
# model.two_stage=True (++ two-stage). docs/custom_data.md has the details.
from ..COCO.deformable_detr_r50_50ep import lr_multiplier, model, optimizer, train
from ..common.backbone_pretraining import backbone_pretraining
from ..common.data.custom_coco import dataloader

dataloader.train.total_batch_size = train.lr_reference_batch_size  # 32, the paper's
model.num_classes = None  # from the JSON
train.output_dir = "./output/deformable_detr_r50_custom"

# Any COCO-format dataset, given by its files on the command line:
#   dataloader.train.dataset.json_file=... dataloader.train.dataset.image_root=...
#   dataloader.test.dataset.json_file=... dataloader.test.dataset.image_root=...
# registered as custom_train / custom_val when the data is first built, never when
# this file loads (deformable_detr.data.coco_json); the classes are the JSON's
# categories. Mappers: DETR's augmentation of coco_detr.py; a config may replace them.
from detectron2.config import LazyCall as L
from detectron2.data import build_detection_test_loader
from omegaconf import OmegaConf

from deformable_detr.data import DetrCOCOEvaluator, build_resumable_train_loader
from deformable_detr.data.coco_json import coco_json_dataset, register_coco_json

from .coco_detr import dataloader as coco

dataloader = OmegaConf.create()
dataloader.train = L(build_resumable_train_loader)(
    dataset=L(coco_json_dataset)(name="custom_train", json_file="", image_root="", clean=True),
    mapper=coco.train.mapper,
    total_batch_size=32,
    num_workers=4,
)
dataloader.test = L(build_detection_test_loader)(
    dataset=L(coco_json_dataset)(name="custom_val", json_file="", image_root="", clean=False),
    mapper=coco.test.mapper,
    num_workers=4,
)
# evaluated against the test JSON (registered here too, in case the evaluator is built first)
dataloader.evaluator = L(DetrCOCOEvaluator)(
    dataset_name=L(register_coco_json)(
        name="${dataloader.test.dataset.name}",
        json_file="${dataloader.test.dataset.json_file}",
        image_root="${dataloader.test.dataset.image_root}",
    )
)

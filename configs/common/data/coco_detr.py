# COCO with DETR's augmentation: random flip, then with probability 0.5 either a
# resize of the shortest edge to 480..800 (step 32, longest at most 1333), or a
# resize to 400/500/600, a random 384..600 crop and the same 480..800 resize.
# Test: shortest edge 800, longest at most 1333.
from detectron2.config import LazyCall as L
from detectron2.data import build_detection_test_loader
from omegaconf import OmegaConf

from deformable_detr.data import (
    DetrCOCOEvaluator,
    DetrDatasetMapper,
    build_resumable_train_loader,
    clean_boxes,
    detection_dataset_dicts,
)
from deformable_detr.data.dataset_mapper import (
    detr_crop_augmentation,
    detr_test_augmentation,
    detr_train_augmentation,
)

TRAIN_SCALES = [480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800]

dataloader = OmegaConf.create()
dataloader.train = L(build_resumable_train_loader)(
    dataset=L(clean_boxes)(
        dataset_dicts=L(detection_dataset_dicts)(names="coco_2017_train", filter_empty=False),
        dataset_name="coco_2017_train",
    ),
    mapper=L(DetrDatasetMapper)(
        is_train=True,
        augmentation=L(detr_train_augmentation)(
            min_sizes=TRAIN_SCALES, max_size=1333, random_flip="horizontal"
        ),
        augmentation_with_crop=L(detr_crop_augmentation)(
            min_sizes=TRAIN_SCALES,
            max_size=1333,
            crop_resize_min_sizes=[400, 500, 600],
            crop_type="absolute_range",
            crop_size=[384, 600],
            random_flip="horizontal",
        ),
        image_format="RGB",
    ),
    total_batch_size=32,
    num_workers=4,
)
dataloader.test = L(build_detection_test_loader)(
    dataset=L(detection_dataset_dicts)(names="coco_2017_val", filter_empty=False),
    mapper=L(DetrDatasetMapper)(
        is_train=False,
        augmentation=L(detr_test_augmentation)(min_size=800, max_size=1333),
        augmentation_with_crop=None,
        image_format="RGB",
    ),
    num_workers=4,
)
dataloader.evaluator = L(DetrCOCOEvaluator)(dataset_name="${..test.dataset.names}")

# The shapes benchmark (registered by importing deformable_detr, generated when
# first loaded, under $D2EXT_DATASETS) at its generated size, random horizontal
# flip in training; evaluated with COCO's AP, AP50, AP75, APs, APm, APl.
from detectron2.config import LazyCall as L
from detectron2.data import build_detection_test_loader
from detectron2.data import transforms as T
from omegaconf import OmegaConf

from deformable_detr.data import (
    DetrCOCOEvaluator,
    DetrDatasetMapper,
    build_resumable_train_loader,
    clean_boxes,
    detection_dataset_dicts,
)
from deformable_detr.data.shapes_benchmark import DATASET_NAMES

TRAIN, VAL = DATASET_NAMES

dataloader = OmegaConf.create()
dataloader.train = L(build_resumable_train_loader)(
    dataset=L(clean_boxes)(
        dataset_dicts=L(detection_dataset_dicts)(names=TRAIN, filter_empty=False),
        dataset_name="${.dataset_dicts.names}",
    ),
    mapper=L(DetrDatasetMapper)(
        is_train=True,
        augmentation=[L(T.RandomFlip)()],
        augmentation_with_crop=None,
        image_format="RGB",
    ),
    total_batch_size=8,
    num_workers=1,
)
dataloader.test = L(build_detection_test_loader)(
    dataset=L(detection_dataset_dicts)(names=VAL, filter_empty=False),
    mapper=L(DetrDatasetMapper)(
        is_train=False, augmentation=[], augmentation_with_crop=None, image_format="RGB"
    ),
    num_workers=1,
)
dataloader.evaluator = L(DetrCOCOEvaluator)(dataset_name="${..test.dataset.names}")

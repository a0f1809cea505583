"""DETR's data mapper: reads an image, applies DETR's augmentation (flip, then
either a multi-scale resize or a resize, random crop and multi-scale resize)
and builds the Instances the model trains on."""

import copy
import logging

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from PIL import Image

__all__ = [
    "DetrDatasetMapper",
    "detr_train_augmentation",
    "detr_crop_augmentation",
    "detr_test_augmentation",
]


def _flip(random_flip: str) -> list:
    if random_flip == "none":
        return []
    return [
        T.RandomFlip(horizontal=random_flip == "horizontal", vertical=random_flip == "vertical")
    ]


def detr_train_augmentation(min_sizes, max_size: int, random_flip: str = "horizontal") -> list:
    """Flip, then resize the shortest edge to one of `min_sizes` (longest at most `max_size`)."""
    return _flip(random_flip) + [T.ResizeShortestEdge(min_sizes, max_size, sample_style="choice")]


def detr_crop_augmentation(
    min_sizes,
    max_size: int,
    crop_resize_min_sizes,
    crop_type: str,
    crop_size,
    random_flip: str = "horizontal",
) -> list:
    """Flip, resize the shortest edge to one of `crop_resize_min_sizes`, crop
    (see T.RandomCrop), then resize as :func:`detr_train_augmentation`."""
    return _flip(random_flip) + [
        T.ResizeShortestEdge(crop_resize_min_sizes, sample_style="choice"),
        T.RandomCrop(crop_type, crop_size),
        T.ResizeShortestEdge(min_sizes, max_size, sample_style="choice"),
    ]


def detr_test_augmentation(min_size: int, max_size: int) -> list:
    return [T.ResizeShortestEdge(min_size, max_size)]


class DetrDatasetMapper:
    """Maps a detectron2 dataset dict to the model's input, like
    detectron2's DatasetMapper, with DETR's augmentation: in training, with
    probability 0.5 `augmentation_with_crop`, else `augmentation`.

    Output: "image" (C,H,W uint8 tensor in `image_format`), "height" and
    "width" of the original image, and in training "instances" with gt_boxes
    (XYXY, in the augmented image) and gt_classes; images without annotations
    get empty Instances.
    """

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        augmentation: list,
        augmentation_with_crop: list | None,
        image_format: str,
    ):
        self.is_train = is_train
        self.augmentation = T.AugmentationList(augmentation)
        self.augmentation_with_crop = (
            T.AugmentationList(augmentation_with_crop)
            if augmentation_with_crop is not None
            else None
        )
        self.image_format = image_format
        mode = "training" if is_train else "inference"
        logging.getLogger(__name__).info(
            f"[DetrDatasetMapper] augmentation in {mode}: {augmentation}, with crop: "
            f"{augmentation_with_crop}"
        )

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        if is_train:
            augmentation = detr_train_augmentation(
                cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.RANDOM_FLIP
            )
            augmentation_with_crop = None
            if cfg.INPUT.CROP.ENABLED:
                augmentation_with_crop = detr_crop_augmentation(
                    cfg.INPUT.MIN_SIZE_TRAIN,
                    cfg.INPUT.MAX_SIZE_TRAIN,
                    cfg.INPUT.CROP.RESIZE_MIN_SIZES,
                    cfg.INPUT.CROP.TYPE,
                    cfg.INPUT.CROP.SIZE,
                    cfg.INPUT.RANDOM_FLIP,
                )
        else:
            augmentation = detr_test_augmentation(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
            augmentation_with_crop = None
        return {
            "is_train": is_train,
            "augmentation": augmentation,
            "augmentation_with_crop": augmentation_with_crop,
            "image_format": cfg.INPUT.FORMAT,
        }

    def __call__(self, dataset_dict: dict) -> dict:
        dataset_dict = copy.deepcopy(dataset_dict)
        file_name = dataset_dict["file_name"]
        try:
            image = utils.read_image(file_name, format=self.image_format)
        except OSError as e:  # also PIL's UnidentifiedImageError
            raise OSError(f"cannot read image {file_name}: {e}") from e
        except (MemoryError, Image.DecompressionBombError) as e:
            raise MemoryError(
                f"image {file_name} is too large to load ({e or 'out of memory'}); shrink it or "
                "leave it out of the dataset"
            ) from e
        utils.check_image_size(dataset_dict, image)

        augmentation = self.augmentation
        # np.random, as detectron2's augmentations: the data loader seeds it (per sample in
        # build_resumable_train_loader)
        if self.is_train and self.augmentation_with_crop is not None and np.random.rand() < 0.5:
            augmentation = self.augmentation_with_crop
        aug_input = T.AugInput(image)
        transforms = augmentation(aug_input)
        image = aug_input.image
        image_shape = image.shape[:2]
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))

        annotations = dataset_dict.pop("annotations", [])
        if self.is_train:
            annotations = [
                utils.transform_instance_annotations(_boxes_only(obj), transforms, image_shape)
                for obj in annotations
                if obj.get("iscrowd", 0) == 0
            ]
            instances = utils.annotations_to_instances(annotations, image_shape)
            dataset_dict["instances"] = utils.filter_empty_instances(instances)
        return dataset_dict


def _boxes_only(annotation: dict) -> dict:
    """The annotation without masks and keypoints, which DETR does not use."""
    return {k: v for k, v in annotation.items() if k not in ("segmentation", "keypoints")}

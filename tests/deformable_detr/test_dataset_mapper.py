"""DetrDatasetMapper: output format, boxes moving with the image, the crop
branch and bad images."""

import re

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import transforms as T
from detectron2.structures import BoxMode

from deformable_detr.data.dataset_mapper import (
    DetrDatasetMapper,
    detr_crop_augmentation,
    detr_test_augmentation,
    detr_train_augmentation,
)

from ..scripts import ROOT

HEIGHT, WIDTH = 60, 80
BOX = [10, 20, 30, 15]  # XYWH: a red rectangle at x 10..40, y 20..35


@pytest.fixture
def record(tmp_path):
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    x, y, w, h = BOX
    image[y : y + h, x : x + w] = (0, 0, 255)  # BGR red
    path = tmp_path / "image.png"
    cv2.imwrite(str(path), image)
    annotation = {"bbox": BOX, "bbox_mode": BoxMode.XYWH_ABS, "category_id": 2, "iscrowd": 0}
    return {
        "file_name": str(path),
        "height": HEIGHT,
        "width": WIDTH,
        "image_id": 1,
        "annotations": [annotation],
    }


def _mapper(augmentation, augmentation_with_crop=None, is_train=True):
    return DetrDatasetMapper(
        is_train,
        augmentation=augmentation,
        augmentation_with_crop=augmentation_with_crop,
        image_format="RGB",
    )


def test_train_output(record):
    mapper = _mapper(
        *(
            detr_train_augmentation((96, 128), 200),
            detr_crop_augmentation((96, 128), 200, (40,), "absolute_range", (30, 50)),
        )
    )
    for _ in range(10):
        out = mapper(record)
        image, instances = out["image"], out["instances"]
        assert image.dtype == torch.uint8 and image.shape[0] == 3
        assert (out["height"], out["width"]) == (HEIGHT, WIDTH)
        assert instances.image_size == tuple(image.shape[1:])
        boxes = instances.gt_boxes.tensor
        assert boxes.dtype == torch.float32 and boxes.shape[1] == 4
        assert (
            (boxes[:, 0] >= 0).all()
            and (boxes[:, 2] <= image.shape[2]).all()
            and (boxes[:, 3] <= image.shape[1]).all()
        )
        assert instances.gt_classes.tolist() in ([], [2])
    assert "annotations" not in out


def test_box_follows_the_image(record):
    out = _mapper(
        [T.RandomFlip(prob=1.0), T.ResizeTransform(HEIGHT, WIDTH, 2 * HEIGHT, 2 * WIDTH, interp=0)]
    )(record)
    x, y, w, h = BOX
    expected = [2 * (WIDTH - x - w), 2 * y, 2 * (WIDTH - x), 2 * (y + h)]
    assert out["instances"].gt_boxes.tensor.tolist() == [expected]
    # the red pixels (RGB: channel 0) are where the box is
    ys, xs = torch.nonzero(out["image"][0] > 128, as_tuple=True)
    assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == expected


def test_crop_branch_half_of_the_time(record):
    mapper = _mapper([T.ResizeShortestEdge(30)], [T.ResizeShortestEdge(40)])
    np.random.seed(0)
    heights = [mapper(record)["image"].shape[1] for _ in range(40)]
    assert 10 <= heights.count(40) <= 30 and heights.count(30) + heights.count(40) == 40
    # no crop branch in inference
    test_mapper = _mapper([T.ResizeShortestEdge(30)], [T.ResizeShortestEdge(40)], is_train=False)
    assert all(test_mapper(record)["image"].shape[1] == 30 for _ in range(10))


def test_inference_output(record):
    out = _mapper(detr_test_augmentation(120, 200), is_train=False)(record)
    assert out["image"].shape == (3, 120, 160)
    assert (out["height"], out["width"]) == (HEIGHT, WIDTH)
    assert "instances" not in out and "annotations" not in out


def test_box_cropped_away_is_dropped(record):
    out = _mapper([T.CropTransform(50, 0, 30, 30)])(record)
    assert len(out["instances"]) == 0 and out["image"].shape == (3, 30, 30)


@pytest.mark.parametrize("annotations", [[], None])
def test_image_without_annotations(record, annotations):
    if annotations is None:
        del record["annotations"]
    else:
        record["annotations"] = annotations
    instances = _mapper([T.RandomFlip()])(record)["instances"]
    assert len(instances) == 0 and instances.gt_boxes.tensor.shape == (0, 4)
    assert instances.gt_classes.shape == (0,)


def test_crowd_boxes_are_skipped(record):
    record["annotations"][0]["iscrowd"] = 1
    assert len(_mapper([])(record)["instances"]) == 0


def test_missing_image(record, tmp_path):
    record["file_name"] = str(tmp_path / "missing.jpg")
    with pytest.raises(OSError, match="missing.jpg"):
        _mapper([])(record)


def test_unreadable_image(record, tmp_path):
    path = tmp_path / "garbage.jpg"
    path.write_bytes(b"not an image" * 10)
    record["file_name"] = str(path)
    with pytest.raises(OSError, match=re.escape(f"cannot read image {path}")):
        _mapper([])(record)


def test_augmentation_helpers():
    train = detr_train_augmentation((480, 800), 1333)
    assert [type(a) for a in train] == [T.RandomFlip, T.ResizeShortestEdge]
    assert train[1].short_edge_length == (480, 800) and train[1].max_size == 1333
    crop = detr_crop_augmentation((480, 800), 1333, (400, 500), "absolute_range", (384, 600))
    assert [type(a) for a in crop] == [
        T.RandomFlip,
        T.ResizeShortestEdge,
        T.RandomCrop,
        T.ResizeShortestEdge,
    ]
    assert crop[1].short_edge_length == (400, 500) and crop[2].crop_size == (384, 600)
    assert crop[2].crop_type == "absolute_range"
    assert [type(a) for a in detr_train_augmentation((480,), 1333, random_flip="none")] == [
        T.ResizeShortestEdge
    ]
    (test,) = detr_test_augmentation(800, 1333)
    assert test.short_edge_length == (800, 800) and test.max_size == 1333


def _augmentation_params(augmentations):
    """[(type, {attribute: value})] of detectron2 augmentations, lists as tuples."""

    def plain(value):
        return tuple(value) if isinstance(value, (list, tuple)) else value

    return [(type(a).__name__, {k: plain(v) for k, v in vars(a).items()}) for a in augmentations]


@pytest.mark.parametrize("is_train", [True, False])
def test_yacs_and_lazy_configs_build_the_same_mapper(is_train):
    """The recipe's augmentation from the COCO yacs config (DetrDatasetMapper.from_config)
    equals the one of the LazyConfig files: DETR's 480..800 resize, the crop branch,
    800 at test time."""
    from detectron2.config import LazyConfig, instantiate

    from deformable_detr import load_yacs_config

    lazy_config = LazyConfig.load(str(ROOT / "configs/COCO/deformable_detr_r50_50ep.py"))
    lazy = instantiate(lazy_config.dataloader["train" if is_train else "test"].mapper)
    yacs = DetrDatasetMapper(
        load_yacs_config(str(ROOT / "configs/COCO/deformable_detr_r50_50ep.yaml")),
        is_train=is_train,
    )
    assert yacs.image_format == lazy.image_format == "RGB"
    assert _augmentation_params(yacs.augmentation.augs) == _augmentation_params(
        lazy.augmentation.augs
    )
    if is_train:
        assert _augmentation_params(yacs.augmentation_with_crop.augs) == _augmentation_params(
            lazy.augmentation_with_crop.augs
        )
        resize = yacs.augmentation.augs[-1]
        assert resize.short_edge_length == tuple(range(480, 801, 32)) and resize.max_size == 1333
        assert [type(a) for a in yacs.augmentation_with_crop.augs] == [
            T.RandomFlip,
            T.ResizeShortestEdge,
            T.RandomCrop,
            T.ResizeShortestEdge,
        ]
    else:
        assert yacs.augmentation_with_crop is None
        assert [a.short_edge_length for a in yacs.augmentation.augs] == [(800, 800)]


def test_crop_branch_off_in_the_config():
    from deformable_detr import load_yacs_config

    cfg = load_yacs_config(
        str(ROOT / "configs/COCO/deformable_detr_r50_50ep.yaml"), ["INPUT.CROP.ENABLED", "False"]
    )
    assert DetrDatasetMapper(cfg, is_train=True).augmentation_with_crop is None

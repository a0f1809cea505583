"""Backbone pretraining without ImageNet: a detector's backbone trained, as the
papers' ResNets are pretrained on ImageNet, on what a detection dataset has: its
training objects, cropped square around their boxes, and background crops (no
object), classified into the dataset's classes plus "background". Nothing is
downloaded. tools/pretrain_backbone.py runs it for any detector config; the
study and the tree-crown experiment start every contestant from it.

The checkpoint holds the backbone's own parameter names and detectron2's
``matching_heuristics``, so it loads into a DETR-family model (``backbone.*``)
and into Faster R-CNN's feature pyramid (``backbone.bottom_up.*``) alike.
"""

import json
import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
from detectron2.config import instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.structures import BoxMode
from torch import nn

from ..data.build import data_class_names, dataset_source
from ..data.coco_json import DatasetError
from .output import atomic_write

__all__ = [
    "PretrainingConfigError",
    "detector_backbone",
    "object_crops",
    "pretrain_backbone",
    "pretrain_detector_backbone",
]


class PretrainingConfigError(ValueError):
    """A config that does not say how to pretrain its backbone."""


# a registered dataset name, or its dataset dicts
Dataset = Union[str, List[dict]]


def _square(x0: float, y0: float, x1: float, y1: float, context: float, height: int, width: int):
    """The square of side (1 + context) x the box's longer side, centred on the box,
    clipped to the image: integer (x0, y0, x1, y1)."""
    side = max(x1 - x0, y1 - y0) * (1.0 + context)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left, top = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
    right, bottom = int(min(width, cx + side / 2)), int(min(height, cy + side / 2))
    return left, top, max(right, left + 1), max(bottom, top + 1)


def _background_square(
    rng,
    boxes: np.ndarray,
    height: int,
    width: int,
    max_side: Optional[int] = None,
    tries: int = 20,
):
    """A random square of 16 to max_side pixels (default half the image's shorter
    side) that no object box covers more than a tenth of, or None."""
    max_side = min(max_side or min(height, width) // 2, min(height, width))
    for _ in range(tries):
        side = int(rng.integers(16, max(17, max_side + 1)))
        x0, y0 = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
        overlap_w = np.clip(
            np.minimum(boxes[:, 2], x0 + side) - np.maximum(boxes[:, 0], x0), 0, None
        )
        overlap_h = np.clip(
            np.minimum(boxes[:, 3], y0 + side) - np.maximum(boxes[:, 1], y0), 0, None
        )
        if len(boxes) == 0 or (overlap_w * overlap_h).max() <= 0.1 * side * side:
            return x0, y0, x0 + side, y0 + side
    return None


def detector_backbone(model):
    """The backbone node (LazyConfig) or module of a detector: a DETR-family model's
    `backbone`, or the network under a feature pyramid's `bottom_up` (Faster R-CNN)."""
    backbone = model.backbone
    is_pyramid = (
        "bottom_up" in backbone if hasattr(backbone, "keys") else hasattr(backbone, "bottom_up")
    )
    return backbone.bottom_up if is_pyramid else backbone


def _records_and_classes(dataset: Dataset, num_classes: Optional[int]) -> Tuple[list, int]:
    """(dataset dicts, number of classes) of a registered name or of dataset dicts;
    the classes come from the name's metadata unless `num_classes` is given."""
    if isinstance(dataset, str):
        records = DatasetCatalog.get(dataset)
        if num_classes is None:
            num_classes = len(MetadataCatalog.get(dataset).thing_classes)
    else:
        records = list(dataset)
    if num_classes is None or num_classes < 1:
        raise ValueError(
            f"num_classes={num_classes}: give the number of classes when the dataset is "
            "given as dataset dicts rather than a registered name"
        )
    return records, num_classes


def object_crops(
    dataset: Dataset,
    crop_size: int,
    context: float,
    backgrounds_per_image: int,
    seed: int,
    num_classes: Optional[int] = None,
    max_background_side: Optional[int] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(crops (N, 3, crop_size, crop_size) uint8 RGB, labels (N,) int64) of the dataset
    (a registered name, or dataset dicts with `num_classes`): one crop per object (its
    class) and up to `backgrounds_per_image` per image (label = the number of classes),
    squares of at most `max_background_side` pixels (default half the image's side)."""
    rng = np.random.default_rng(seed)
    records, num_classes = _records_and_classes(dataset, num_classes)
    crops, labels = [], []
    for record in records:
        image = read_image(record["file_name"], format="RGB")
        height, width = image.shape[:2]
        boxes = np.array(
            [
                BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
                for a in record["annotations"]
            ],
            dtype=np.float64,
        ).reshape(-1, 4)
        squares = [_square(*box, context, height, width) for box in boxes]
        squares_labels = [a["category_id"] for a in record["annotations"]]
        for _ in range(backgrounds_per_image):
            square = _background_square(rng, boxes, height, width, max_background_side)
            if square is not None:
                squares.append(square)
                squares_labels.append(num_classes)
        for (x0, y0, x1, y1), label in zip(squares, squares_labels):
            crop = cv2.resize(image[y0:y1, x0:x1], (crop_size, crop_size), cv2.INTER_AREA)
            crops.append(crop)
            labels.append(label)
    crops = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()
    return crops, torch.tensor(labels, dtype=torch.int64)


class _Classifier(nn.Module):
    """The backbone's last feature map, averaged, then one linear layer."""

    def __init__(self, backbone: nn.Module, num_labels: int):
        super().__init__()
        self.backbone = backbone
        self.feature = backbone.output_shape()
        self.feature_name = max(self.feature, key=lambda k: self.feature[k].stride)
        self.head = nn.Linear(self.feature[self.feature_name].channels, num_labels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feature = self.backbone(images)[self.feature_name]
        return self.head(feature.mean(dim=(2, 3)))


def _accuracy(model: nn.Module, crops: torch.Tensor, labels: torch.Tensor, normalize) -> float:
    model.eval()
    with torch.no_grad():
        predictions = torch.cat([model(normalize(batch)).argmax(1) for batch in crops.split(256)])
    model.train()
    return float((predictions == labels).float().mean())


def pretrain_backbone(
    backbone,
    *,
    train_dataset: Dataset,
    val_dataset: Dataset,
    output_path: str,
    pixel_mean: Sequence[float],
    pixel_std: Sequence[float],
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    crop_size: int,
    context: float,
    backgrounds_per_image: int,
    seed: int,
    num_classes: Optional[int] = None,
    max_background_side: Optional[int] = None,
) -> Dict[str, float]:
    """Trains `backbone` (a LazyConfig node or a module) to classify the crops of
    `train_dataset` (a registered name, or dataset dicts with `num_classes`; AdamW,
    cosine lr, random horizontal flips, inputs normalised as the detectors normalise
    them) and writes {"model": its state dict,
    "matching_heuristics": True} to `output_path`, and the crop accuracies on both
    datasets to output_path's .json. Returns that record."""
    torch.manual_seed(seed)
    backbone = instantiate(backbone) if not isinstance(backbone, nn.Module) else backbone
    train_dataset, num_classes = _records_and_classes(train_dataset, num_classes)

    def crops_of(dataset, crops_seed):
        return object_crops(
            dataset,
            crop_size,
            context,
            backgrounds_per_image,
            crops_seed,
            num_classes,
            max_background_side,
        )

    crops, labels = crops_of(train_dataset, seed)
    val_crops, val_labels = crops_of(val_dataset, seed + 1)
    num_labels = num_classes + 1  # + background
    model = _Classifier(backbone, num_labels)
    mean = torch.tensor(pixel_mean).view(1, 3, 1, 1)
    std = torch.tensor(pixel_std).view(1, 3, 1, 1)

    def normalize(batch):
        return (batch.float() - mean) / std

    steps_per_epoch = max(1, len(crops) // batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(crops), generator=generator)
        for step in range(steps_per_epoch):
            index = order[step * batch_size : (step + 1) * batch_size]
            batch = crops[index]
            flip = torch.rand(len(index), generator=generator) < 0.5
            batch[flip] = batch[flip].flip(-1)
            loss = nn.functional.cross_entropy(model(normalize(batch)), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        print(
            f"backbone pretraining: epoch {epoch + 1}/{epochs}, loss {loss.item():.3f}",
            flush=True,
        )
    record = {
        "train_crops": len(crops),
        "val_crops": len(val_crops),
        "labels": num_labels,
        "train_accuracy": _accuracy(model, crops, labels, normalize),
        "val_accuracy": _accuracy(model, val_crops, val_labels, normalize),
    }
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    state = {k: v.detach().clone() for k, v in backbone.state_dict().items()}
    # the record first: the checkpoint's presence marks the pretraining as done
    with open(os.path.splitext(output_path)[0] + ".json", "w") as f:
        json.dump(record, f, indent=1)
    checkpoint = {"model": state, "matching_heuristics": True}
    atomic_write(output_path, lambda f: torch.save(checkpoint, f))
    return record


def pretrain_detector_backbone(cfg, output_path: str) -> Dict[str, float]:
    """Pretrains the backbone of a detector's LazyConfig (see detector_backbone) on the
    config's own data: crops of dataloader.train.dataset, accuracy also on
    dataloader.test.dataset, inputs normalised by cfg.model's pixel_mean/pixel_std,
    with the settings cfg.backbone_pretraining (configs/common/backbone_pretraining.py).
    Writes the checkpoint to `output_path`; returns the accuracies' record."""
    if "backbone_pretraining" not in cfg:
        raise PretrainingConfigError(
            "the config has no backbone_pretraining settings; add "
            "`from ..common.backbone_pretraining import backbone_pretraining` to it "
            "(configs/common/backbone_pretraining.py)"
        )
    train_records = instantiate(cfg.dataloader.train.dataset)
    val_records = instantiate(cfg.dataloader.test.dataset)
    class_names = data_class_names(cfg)  # the datasets are registered now
    if not class_names:
        raise DatasetError(f"the classes of the config's data are unknown: {dataset_source(cfg)}")
    return pretrain_backbone(
        detector_backbone(cfg.model),
        train_dataset=train_records,
        val_dataset=val_records,
        num_classes=len(class_names),
        output_path=output_path,
        pixel_mean=list(cfg.model.pixel_mean),
        pixel_std=list(cfg.model.pixel_std),
        **cfg.backbone_pretraining,
    )

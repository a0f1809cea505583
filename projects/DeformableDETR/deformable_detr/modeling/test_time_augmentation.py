"""Test-time augmentation of Deformable DETR, in the manner of detectron2's
GeneralizedRCNNWithTTA: the model runs on the image at several sizes, each with
and without a horizontal flip, and the detections are merged per class.

Merging is weighted box fusion by default (deformable_detr.modeling.box_fusion): the
repeats of an object across augmentations become one box, the score-weighted
mean of theirs, so the views' localisation errors average out, and an object
found by few views scores less. Per-class NMS (detectron2's choice for its R-CNN
TTA) keeps one view's box as it is. docs/benchmarks.md has the AP of both on the
synthetic data (tests/deformable_detr/test_tta.py checks that fusion gains).
"""

from typing import Dict, List, Optional, Sequence

import torch
from detectron2.config import configurable
from detectron2.modeling.test_time_augmentation import DatasetMapperTTA
from detectron2.structures import Boxes, Instances
from torch import nn
from torchvision.ops import batched_nms

from .box_fusion import weighted_boxes_fusion

__all__ = ["MERGE_METHODS", "DeformableDETRWithTTA", "with_test_time_augmentation"]

MERGE_METHODS = ("wbf", "nms")


class DeformableDETRWithTTA(nn.Module):
    """Wraps a DeformableDETR for inference with test-time augmentation.

    Takes the model's inputs (dicts with "image" (C, H, W) in the model's
    format, as the test mapper or DefaultPredictor resized it, and the original
    "height"/"width") and returns {"instances": Instances} in original pixels:
    with one augmentation, exactly the model's detections; with several, theirs
    merged per class (`merge`: "wbf", weighted box fusion, or "nms"; detections of
    a class overlapping by more than `iou_threshold` are one object), the
    `max_detections` best (default: the model's test_topk).
    """

    @configurable
    def __init__(
        self,
        model: nn.Module,
        *,
        min_sizes: Sequence[int],
        max_size: int,
        flip: bool,
        merge: str = "wbf",
        iou_threshold: float = 0.55,
        max_detections: Optional[int] = None,
    ):
        super().__init__()
        if not min_sizes:
            raise ValueError("min_sizes is empty; expected at least one test size")
        if merge not in MERGE_METHODS:
            raise ValueError(f"merge={merge!r}; expected one of {', '.join(MERGE_METHODS)}")
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold={iou_threshold}; expected a value in (0, 1]")
        self.model = model
        self.tta_mapper = DatasetMapperTTA(min_sizes=list(min_sizes), max_size=max_size, flip=flip)
        self.merge = merge
        self.iou_threshold = iou_threshold
        self.max_detections = max_detections or model.test_topk

    @classmethod
    def from_config(cls, cfg, model):
        """yacs: detectron2's TEST.AUG.MIN_SIZES / MAX_SIZE / FLIP, and TEST.AUG.MERGE /
        IOU_THRESH."""
        return {
            "model": model,
            "min_sizes": cfg.TEST.AUG.MIN_SIZES,
            "max_size": cfg.TEST.AUG.MAX_SIZE,
            "flip": cfg.TEST.AUG.FLIP,
            "merge": cfg.TEST.AUG.MERGE,
            "iou_threshold": cfg.TEST.AUG.IOU_THRESH,
        }

    def forward(self, batched_inputs: List[Dict]) -> List[Dict]:
        if self.model.training:
            raise RuntimeError("DeformableDETRWithTTA is for inference; call .eval() first")
        return [{"instances": self.detect(x)} for x in batched_inputs]

    def augmented_inputs(self, inputs: Dict) -> List[Dict]:
        """The image at every test size and flip, with "transforms" that map the
        original image to each."""
        image = inputs["image"]
        inputs = {
            "image": image.cpu(),
            "height": inputs.get("height", image.shape[1]),
            "width": inputs.get("width", image.shape[2]),
        }
        return self.tta_mapper(inputs)

    def detect(self, inputs: Dict) -> Instances:
        height = inputs.get("height", inputs["image"].shape[1])
        width = inputs.get("width", inputs["image"].shape[2])
        boxes, scores, classes = [], [], []
        for augmented in self.augmented_inputs(inputs):
            image = augmented["image"]
            # detections in the augmented image's pixels, mapped back to the original
            instances = self.model(
                [{"image": image, "height": image.shape[1], "width": image.shape[2]}]
            )[0]["instances"]
            inverse = augmented["transforms"].inverse()
            original = inverse.apply_box(instances.pred_boxes.tensor.cpu().numpy())
            boxes.append(torch.as_tensor(original, dtype=torch.float32))
            scores.append(instances.scores.cpu())
            classes.append(instances.pred_classes.cpu())
        merged = Instances((height, width))
        boxes, scores, classes = torch.cat(boxes), torch.cat(scores), torch.cat(classes)
        num_views = len(self.tta_mapper.min_sizes) * (2 if self.tta_mapper.flip else 1)
        if num_views > 1:
            if self.merge == "wbf":  # fused detections come best first
                boxes, scores, classes = weighted_boxes_fusion(
                    boxes, scores, classes, num_views, self.iou_threshold
                )
                keep = slice(self.max_detections)
            else:
                keep = batched_nms(boxes, scores, classes, self.iou_threshold)
                keep = keep[: self.max_detections]
            boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
        merged.pred_boxes = Boxes(boxes)
        merged.pred_boxes.clip((height, width))
        merged.scores = scores
        merged.pred_classes = classes
        return merged


def with_test_time_augmentation(model: nn.Module, test_aug: Optional[Dict]) -> nn.Module:
    """`model` wrapped in DeformableDETRWithTTA when the LazyConfig's
    `train.test_aug.enabled`, with its min_sizes, max_size, flip, merge and
    iou_threshold; else `model` itself."""
    if not test_aug or not test_aug.get("enabled", False):
        return model
    args = {k: v for k, v in test_aug.items() if k != "enabled"}
    return DeformableDETRWithTTA(getattr(model, "module", model), **args)  # DDP: the model

"""Sliced inference for images larger than a model's input, in the manner of
detectron2's GeneralizedRCNNWithTTA: the model runs on overlapping windows of the
image at its own resolution (optionally plus one downscaled view of the whole
image) and the windows' detections, mapped to full-image pixels, are merged per
class by NMS or weighted box fusion (deformable_detr.modeling.box_fusion).

The model's detection cap (test_topk) applies per window; the merged detections are
all kept up to `max_detections` (generous by default, and a warning says when it
cuts). Windows are cut as data.tiling cuts training tiles, and each window goes
through `window_augmentation`, the test mapper's resize, as a tile would.

    predictor = SlicedPredictor(cfg)              # yacs: TEST.SLICED.*
    model = with_sliced_inference(model, cfg)     # LazyConfig: train.sliced_inference.*
"""

import itertools
import logging
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import CfgNode, configurable, instantiate
from detectron2.data import transforms as T
from detectron2.data.detection_utils import read_image
from detectron2.engine import DefaultPredictor
from detectron2.structures import Boxes, Instances
from detectron2.utils.logger import log_first_n
from torch import nn
from torchvision.ops import batched_nms

from ..data.dataset_mapper import detr_test_augmentation
from ..data.tiling import window_grid
from .box_fusion import weighted_boxes_fusion
from .test_time_augmentation import MERGE_METHODS

__all__ = [
    "FullResolution",
    "SlicedDetector",
    "SlicedPredictor",
    "lazy_sliced_arguments",
    "merge_detections",
    "slice_predictor",
    "with_sliced_inference",
]

logger = logging.getLogger(__name__)


def merge_detections(
    boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, merge: str, iou: float
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Detections of overlapping views, (K, 4) XYXY, (K,), (K,), merged per class:
    "nms" keeps the best of each group overlapping by more than `iou`, "wbf" fuses
    them (one view's box each: a fused score is its members' mean). Best first."""
    if merge == "wbf":
        return weighted_boxes_fusion(boxes, scores, classes, 1, iou)
    keep = batched_nms(boxes, scores, classes, iou)
    return boxes[keep], scores[keep], classes[keep]


class FullResolution(T.Augmentation):
    """No resize: a predictor's augmentation when its model slices the image itself."""

    def get_transform(self, image):
        return T.NoOpTransform()


class SlicedDetector(nn.Module):
    """Wraps a detector of this project (any model taking detectron2's inputs) for
    sliced inference on images of any size.

    Takes the model's inputs, dicts with "image" (C, H, W) in the model's format and
    the original "height"/"width", and returns {"instances": Instances} in original
    pixels. The image sliced is the one at the original size: "image" itself when it
    has that size, else "file_name" read again (evaluation's test mapper resizes);
    without either, the image as given, the boxes scaled to the original size.

    Args:
        window_size, overlap: windows of window_size pixels, neighbours sharing at
            least `overlap` (data.tiling.window_grid).
        window_augmentation: applied to each window (and the full view) before the
            model, e.g. the test mapper's resize; none by default.
        full_view: also run the model on the whole image downscaled to window_size
            (its longer side), for objects larger than the overlap.
        merge, iou_threshold: "nms" or "wbf" per class, at this IoU.
        edge_margin: when set, a window's detection within this many pixels of an
            edge the window shares with a neighbour is dropped, as an object cut by
            the window: one no larger than overlap - 2 * edge_margin lies whole in a
            neighbour. None keeps them.
        max_detections: the most detections returned per image.
        batch_size: windows per model call.
        image_format: of the images read again from "file_name".
    """

    @configurable
    def __init__(
        self,
        model: nn.Module,
        *,
        window_size: int,
        overlap: int,
        window_augmentation: Sequence[T.Augmentation] = (),
        full_view: bool = False,
        merge: str = "nms",
        iou_threshold: float = 0.5,
        edge_margin: Optional[float] = None,
        max_detections: int = 10000,
        batch_size: int = 1,
        image_format: str = "BGR",
    ):
        super().__init__()
        window_grid(window_size, window_size, window_size, overlap)  # checks them
        if merge not in MERGE_METHODS:
            raise ValueError(f"merge={merge!r}; expected one of {', '.join(MERGE_METHODS)}")
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold={iou_threshold}; expected a value in (0, 1]")
        if edge_margin is not None and not 0 <= 2 * edge_margin < overlap:
            raise ValueError(f"edge_margin={edge_margin}; expected 0 <= 2 * it < overlap {overlap}")
        if max_detections < 1 or batch_size < 1:
            raise ValueError(
                f"max_detections={max_detections}, batch_size={batch_size}; expected >= 1"
            )
        self.model = model
        self.window_size, self.overlap = window_size, overlap
        self.window_augmentation = T.AugmentationList(list(window_augmentation))
        self.full_view = full_view
        self.merge, self.iou_threshold = merge, iou_threshold
        self.edge_margin = edge_margin
        self.max_detections, self.batch_size = max_detections, batch_size
        self.image_format = image_format

    @classmethod
    def from_config(cls, cfg, model):
        """yacs: TEST.SLICED.*; each window resized as the test mapper resizes
        (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST)."""
        sliced = cfg.TEST.SLICED
        return {
            "model": model,
            "window_size": sliced.WINDOW_SIZE,
            "overlap": sliced.OVERLAP,
            "window_augmentation": detr_test_augmentation(
                cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST
            ),
            "full_view": sliced.FULL_VIEW,
            "merge": sliced.MERGE,
            "iou_threshold": sliced.IOU_THRESH,
            "edge_margin": sliced.EDGE_MARGIN,
            "max_detections": sliced.MAX_DETECTIONS,
            "batch_size": sliced.BATCH_SIZE,
            "image_format": cfg.INPUT.FORMAT,
        }

    @property
    def class_names(self):
        """The wrapped model's class names (None when it records none)."""
        return getattr(self.model, "class_names", None)

    def forward(self, batched_inputs: List[Dict]) -> List[Dict]:
        if self.model.training:
            raise RuntimeError("SlicedDetector is for inference; call .eval() first")
        return [{"instances": self.detect(x)} for x in batched_inputs]

    def full_image(self, inputs: Dict) -> np.ndarray:
        """(H, W, C) image to slice: at the original size where available."""
        image = inputs["image"]
        size = (inputs.get("height", image.shape[1]), inputs.get("width", image.shape[2]))
        if tuple(image.shape[1:]) != size and inputs.get("file_name"):
            original = read_image(inputs["file_name"], format=self.image_format)
            if original.shape[:2] != size:
                raise ValueError(
                    f"{inputs['file_name']}: {original.shape[1]}x{original.shape[0]} pixels, "
                    f"but its inputs give width {size[1]}, height {size[0]}"
                )
            return original
        return image.permute(1, 2, 0).cpu().numpy()

    def views(self, image: np.ndarray) -> Iterator[Tuple[Dict, Tuple[int, int, int, int]]]:
        """The model inputs of the windows (and the full view), made one at a time,
        each with the window, XYXY in `image`'s pixels, whose pixels its detections are in."""
        height, width = image.shape[:2]
        crops = ((image[y0:y1, x0:x1], (x0, y0, x1, y1)) for x0, y0, x1, y1 in
                 window_grid(height, width, self.window_size, self.overlap))  # fmt: skip
        if self.full_view and max(height, width) > self.window_size:
            scale = self.window_size / max(height, width)
            resize = T.ResizeTransform(
                height, width, round(height * scale), round(width * scale), interp=2
            )  # bilinear
            crops = itertools.chain(crops, [(resize.apply_image(image), (0, 0, width, height))])
        for crop, window in crops:
            aug_input = T.AugInput(np.ascontiguousarray(crop))
            self.window_augmentation(aug_input)
            tensor = torch.as_tensor(aug_input.image.astype("float32").transpose(2, 0, 1))
            h, w = window[3] - window[1], window[2] - window[0]
            yield {"image": tensor, "height": h, "width": w}, window

    def cut_by_window(self, boxes: torch.Tensor, window, height: int, width: int) -> torch.Tensor:
        """(K,) bool: the boxes (K, 4), in image pixels, within edge_margin of an edge
        that `window` shares with a neighbour."""
        x0, y0, x1, y1 = window
        m = self.edge_margin
        cut = torch.zeros(len(boxes), dtype=torch.bool)
        for inner, near in (
            (x0 > 0, boxes[:, 0] < x0 + m),
            (y0 > 0, boxes[:, 1] < y0 + m),
            (x1 < width, boxes[:, 2] > x1 - m),
            (y1 < height, boxes[:, 3] > y1 - m),
        ):
            if inner:
                cut |= near
        return cut

    def window_detections(self, image: np.ndarray):
        """Every view's detections in `image`'s pixels: boxes (K, 4), scores, classes."""
        height, width = image.shape[:2]
        views = self.views(image)
        boxes, scores, classes = [], [], []
        while batch := list(itertools.islice(views, self.batch_size)):
            outputs = self.model([inputs for inputs, _ in batch])
            for output, (_, window) in zip(outputs, batch):
                instances = output["instances"].to("cpu")
                found = instances.pred_boxes.tensor + torch.tensor(window[:2] * 2).float()
                keep = torch.ones(len(found), dtype=torch.bool)
                if self.edge_margin is not None:  # the full view has no shared edge
                    keep = ~self.cut_by_window(found, window, height, width)
                boxes.append(found[keep])
                scores.append(instances.scores[keep])
                classes.append(instances.pred_classes[keep])
        return torch.cat(boxes), torch.cat(scores), torch.cat(classes)

    def detect(self, inputs: Dict) -> Instances:
        image = self.full_image(inputs)
        height = inputs.get("height", image.shape[0])
        width = inputs.get("width", image.shape[1])
        boxes, scores, classes = merge_detections(
            *self.window_detections(image), self.merge, self.iou_threshold
        )
        if len(boxes) > self.max_detections:
            logger.warning(
                f"kept the {self.max_detections} best of {len(boxes)} merged detections "
                "(max_detections)"
            )
            boxes, scores, classes = (t[: self.max_detections] for t in (boxes, scores, classes))
        log_first_n(
            logging.INFO,
            f"sliced inference: {image.shape[1]}x{image.shape[0]} image, "
            f"{len(window_grid(*image.shape[:2], self.window_size, self.overlap))} windows of "
            f"{self.window_size} (overlap {self.overlap}){' + full view' if self.full_view else ''}"
            f", {len(boxes)} detections",
            name=__name__,
        )
        scale = torch.tensor([width / image.shape[1], height / image.shape[0]] * 2)
        result = Instances((height, width))
        result.pred_boxes = Boxes(boxes * scale)
        result.pred_boxes.clip((height, width))
        result.scores = scores
        result.pred_classes = classes
        return result


def lazy_sliced_arguments(cfg) -> Dict:
    """SlicedDetector's arguments from a LazyConfig's train.sliced_inference, each
    window resized by the test mapper's augmentation."""
    sliced = cfg.train.get("sliced_inference")
    if not sliced:
        raise ValueError("the config has no train.sliced_inference (configs/common/train.py)")
    augmentation = instantiate(cfg.dataloader.test.mapper.get("augmentation", None)) or []
    if isinstance(augmentation, T.Augmentation):
        augmentation = [augmentation]
    return {
        **{k: v for k, v in sliced.items() if k != "enabled"},
        "window_augmentation": list(augmentation),
        "image_format": cfg.dataloader.test.mapper.get("image_format", "BGR"),
    }


def with_sliced_inference(model: nn.Module, cfg) -> nn.Module:
    """`model` wrapped in SlicedDetector when the LazyConfig's
    `train.sliced_inference.enabled` (see lazy_sliced_arguments); else `model`."""
    if not cfg.train.get("sliced_inference", {}).get("enabled", False):
        return model
    if cfg.train.get("test_aug", {}).get("enabled", False):
        raise ValueError(
            "train.sliced_inference.enabled and train.test_aug.enabled are both set; "
            "expected one of them"
        )
    return SlicedDetector(getattr(model, "module", model), **lazy_sliced_arguments(cfg))


def slice_predictor(predictor, cfg):
    """`predictor` (DefaultPredictor, or the demo's ConfigPredictor) with its model
    wrapped in SlicedDetector, from TEST.SLICED.* (yacs) or train.sliced_inference.*
    (LazyConfig), and its whole-image resize removed (each window is resized)."""
    if isinstance(cfg, CfgNode):
        predictor.model = SlicedDetector(cfg, predictor.model)
    else:
        predictor.model = SlicedDetector(predictor.model, **lazy_sliced_arguments(cfg))
    predictor.aug = FullResolution()
    return predictor


class SlicedPredictor(DefaultPredictor):
    """DefaultPredictor with sliced inference (TEST.SLICED.*): BGR image of any size
    in, the merged detections in its pixels out."""

    def __init__(self, cfg):
        super().__init__(cfg)
        slice_predictor(self, cfg)

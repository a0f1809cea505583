"""What the DETR-family meta-architectures share: input normalization and padding,
targets for the set criterion, and post-processing of the set predictions."""

from typing import Dict, List

import torch
from detectron2.modeling import detector_postprocess
from detectron2.structures import Boxes, ImageList, Instances
from torch import nn
from torchvision.ops import box_convert

from ...export.precision import full_precision, inference_autocast

__all__ = ["SetPredictionDetector"]


class SetPredictionDetector(nn.Module):
    """Base of the DETR-family meta-architectures.

    A subclass sets `pixel_mean`, `pixel_std` (buffers (C, 1, 1)), `criterion` and
    `test_topk`, and implements `predict(images: ImageList) -> dict` with
    "pred_logits" (N, Q, K) and "pred_boxes" (N, Q, 4) normalized (cx, cy, w, h)
    (plus what its criterion takes). Inference here scores classes with a sigmoid
    (focal-loss heads); a softmax head with a no-object class overrides select_topk.
    Inference runs at `inference_precision` ("fp32" or "bf16", deformable_detr.export.precision).
    """

    inference_precision = "fp32"

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """(C, H, W) image in the input format -> normalized by pixel mean and std."""
        return (image.to(self.device) - self.pixel_mean) / self.pixel_std

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        return ImageList.from_tensors([self.normalize(x["image"]) for x in batched_inputs])

    @staticmethod
    def padding_mask(images: ImageList) -> torch.Tensor:
        """(N, H, W) bool, True on the padding of each image."""
        N, _, H, W = images.tensor.shape
        mask = torch.ones((N, H, W), dtype=torch.bool, device=images.tensor.device)
        for i, (h, w) in enumerate(images.image_sizes):
            mask[i, :h, :w] = False
        return mask

    def forward(self, batched_inputs: List[Dict]):
        images = self.preprocess_image(batched_inputs)
        if self.training:
            return self.criterion(self.predict(images), self.prepare_targets(batched_inputs))
        with inference_autocast(self.inference_precision, self.device):
            outputs = self.predict(images)
        logits, boxes = (
            full_precision(outputs["pred_logits"]),
            full_precision(outputs["pred_boxes"]),
        )
        results = self.inference(logits, boxes, images.image_sizes)
        processed = []
        for result, inputs, image_size in zip(results, batched_inputs, images.image_sizes):
            height = inputs.get("height", image_size[0])
            width = inputs.get("width", image_size[1])
            processed.append({"instances": detector_postprocess(result, height, width)})
        return processed

    def prepare_targets(self, batched_inputs: List[Dict]) -> List[Dict[str, torch.Tensor]]:
        """Ground truth as the criterion takes it: labels (T,) and normalized
        (cx, cy, w, h) boxes (T, 4) relative to each (resized, unpadded) image."""
        targets = []
        for x in batched_inputs:
            instances = x["instances"].to(self.device)
            h, w = instances.image_size
            scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=self.device)
            boxes = box_convert(instances.gt_boxes.tensor / scale, "xyxy", "cxcywh")
            targets.append({"labels": instances.gt_classes, "boxes": boxes})
        return targets

    def select_topk(self, logits: torch.Tensor, boxes: torch.Tensor):
        """Top-k of sigmoid scores over queries x classes.

        Args:
            logits: (N, Q, K); boxes: (N, Q, 4) normalized (cx, cy, w, h).

        Returns:
            scores (N, k), classes (N, k) int64 and normalized (x1, y1, x2, y2) boxes (N, k, 4),
            k = min(test_topk, Q * K), best first.
        """
        N, Q, K = logits.shape
        scores, indices = logits.sigmoid().view(N, -1).topk(min(self.test_topk, Q * K), dim=1)
        queries = torch.div(indices, K, rounding_mode="floor")
        labels = indices % K
        boxes_xyxy = box_convert(boxes, "cxcywh", "xyxy").gather(
            1, queries[..., None].expand(-1, -1, 4)
        )
        return scores, labels, boxes_xyxy

    def inference(self, logits: torch.Tensor, boxes: torch.Tensor, image_sizes) -> List[Instances]:
        """select_topk as Instances with boxes in pixels of the resized images.

        Args:
            logits: (N, Q, K); boxes: (N, Q, 4) normalized (cx, cy, w, h).
            image_sizes: N (h, w) of the resized images.
        """
        scores, labels, boxes_xyxy = self.select_topk(logits, boxes)
        results = []
        for i, (h, w) in enumerate(image_sizes):
            result = Instances((h, w))
            scale = torch.tensor([w, h, w, h], dtype=boxes_xyxy.dtype, device=boxes_xyxy.device)
            result.pred_boxes = Boxes(boxes_xyxy[i] * scale)
            result.scores = scores[i]
            result.pred_classes = labels[i]
            results.append(result)
        return results

"""What the DETR-family meta-architectures share: the box MLP and class heads
(with the focal prior), input normalization and padding masks, the set of
outputs, targets for the set criterion, post-processing of the set predictions,
and the class heads the loading rule re-initialises."""

import math
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.modeling import Backbone, detector_postprocess
from detectron2.structures import Boxes, ImageList, Instances
from torch import nn
from torchvision.ops import box_convert

from ...checkpoint.loading_rule import ClassHeads, register_class_heads
from ...export.precision import full_precision, inference_autocast
from ..criterion import resolved_num_classes

__all__ = ["MLP", "SetPredictionDetector", "focal_prior_bias"]


class MLP(nn.Module):
    """Linear layers with ReLU between them (the box head)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims, dims[1:] + [output_dim]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


def focal_prior_bias(prior_prob: float) -> float:
    """The class-head bias whose sigmoid is `prior_prob` (focal loss's prior)."""
    return -math.log((1 - prior_prob) / prior_prob)


@register_class_heads
class SetPredictionDetector(nn.Module):
    """Base of the DETR-family meta-architectures.

    A subclass builds `class_embed` (class heads from :meth:`class_head`: an
    nn.Linear or an nn.ModuleList of them) and implements
    `predict_masked(images, image_mask) -> dict` with "pred_logits" (N, Q, K) and
    "pred_boxes" (N, Q, 4) normalized (cx, cy, w, h) (plus what its criterion
    takes). Inference here scores classes with a sigmoid (focal-loss heads); a
    softmax head with a no-object class sets `class_loss = "softmax"` and overrides
    select_topk. Inference runs at `inference_precision` ("fp32" or "bf16",
    deformable_detr.export.precision).

    Args:
        backbone: a detectron2 backbone.
        position_embedding: maps a padding mask (N, H, W) to (N, C, H, W).
        transformer: the subclass's transformer.
        criterion: the set criterion, called as criterion(outputs, targets) in training.
        num_classes: K >= 1, object classes (0 or None, "from the data", is an error here).
        pixel_mean, pixel_std: per channel of the input format.
        aux_loss: losses on every decoder layer, not only the last.
        test_topk: detections kept per image.
        prior_prob: focal heads: initial foreground probability of the class heads.
    """

    inference_precision = "fp32"
    class_loss = "focal"

    def __init__(
        self,
        *,
        backbone: Backbone,
        position_embedding: nn.Module,
        transformer: nn.Module,
        criterion: nn.Module,
        num_classes: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        aux_loss: bool,
        test_topk: int,
        prior_prob: float,
    ):
        super().__init__()
        self.backbone = backbone
        self.position_embedding = position_embedding
        self.transformer = transformer
        self.criterion = criterion
        self.num_classes = resolved_num_classes(num_classes)
        self.aux_loss = aux_loss
        self.test_topk = test_topk
        self.prior_prob = prior_prob
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    def class_head(self, hidden_dim: int) -> nn.Linear:
        """A class head: K logits (K + 1 with a softmax head's no-object class), a
        focal head's bias at the focal prior."""
        head = nn.Linear(hidden_dim, self.num_classes + (self.class_loss == "softmax"))
        self._init_bias(head)
        return head

    def _init_bias(self, head: nn.Linear) -> None:
        if self.class_loss == "focal":
            nn.init.constant_(head.bias, focal_prior_bias(self.prior_prob))

    def reset_class_heads(self) -> None:
        """Re-initialises every class head (a head shared by the decoder layers once)
        as at construction: torch's default weights, a focal head's bias at the prior."""
        for head in self.class_embed.modules():
            if isinstance(head, nn.Linear):
                head.reset_parameters()
                self._init_bias(head)

    def class_heads(self) -> ClassHeads:
        """The class heads, as the loading rule re-initialises them
        (deformable_detr.checkpoint.loading_rule)."""
        return ClassHeads(
            prefixes=("class_embed.",),
            reset=self.reset_class_heads,
            extra_logits=int(self.class_loss == "softmax"),
            initialisation="with the focal prior"
            if self.class_loss == "focal"
            else "as at construction",
        )

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

    def masked_position(
        self, image_mask: torch.Tensor, src: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The padding mask (N, H, W) resized to the feature map src (N, C, h, w), as
        (N, h, w) bool, and its position embedding (N, C', h, w) in src's dtype."""
        mask = F.interpolate(image_mask[None].float(), size=src.shape[-2:])[0].to(torch.bool)
        return mask, self.position_embedding(mask, src.dtype).to(src.dtype)

    def predict(self, images: ImageList) -> Dict:
        """The raw predictions on normalized, padded images (see predict_masked)."""
        return self.predict_masked(images.tensor, self.padding_mask(images))

    def predict_masked(self, images: torch.Tensor, image_mask: torch.Tensor) -> Dict:
        """The raw predictions on padded images (N, 3, H, W) with their padding mask
        (N, H, W), True at padding: the tensor-only form that the exporters trace."""
        raise NotImplementedError

    def set_outputs(self, logits: Sequence[torch.Tensor], boxes: Sequence[torch.Tensor]) -> Dict:
        """The outputs of the decoder layers' logits (N, Q, K) and boxes (N, Q, 4), first
        layer first: the last layer's, and with aux_loss the earlier ones' as "aux_outputs"."""
        outputs = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if self.aux_loss:
            outputs["aux_outputs"] = [
                {"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])
            ]
        return outputs

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

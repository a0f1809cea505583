"""DETR (Carion et al., ECCV 2020) as a detectron2 meta-architecture: the baseline
Deformable DETR is measured against, sharing its backbone handling, matcher,
criterion, position encoding and post-processing."""

from typing import Dict

import torch
from detectron2.modeling import Backbone
from torch import nn
from torchvision.ops import box_convert

from ..criterion import CLASS_LOSSES
from ..detr_transformer import DetrTransformer
from .set_prediction import MLP, SetPredictionDetector

__all__ = ["DETR"]


class DETR(SetPredictionDetector):
    """DETR: one backbone feature map (C5), a standard transformer and learned
    queries. With class_loss "softmax" it is the paper's model (K + 1 logits, the
    last "no object"; each query predicts its best class); with "focal" (and 300
    queries) it is the Deformable DETR paper's "DETR+" (K sigmoid logits, top-k
    over queries x classes). Inputs and outputs as DeformableDETR.

    Args:
        backbone: a detectron2 backbone; in_feature: its output fed to the transformer.
        position_embedding: maps a padding mask (N, H, W) to (N, C, H, W).
        transformer: a DetrTransformer.
        criterion: a SetCriterion with the same class_loss.
        num_classes: K, object classes.
        num_queries: learned queries.
        class_loss: "softmax" or "focal", which the class head and inference follow.
        aux_loss: losses on every decoder layer, not only the last.
        test_topk: detections kept per image.
        prior_prob: "focal" only: initial foreground probability of the class head.
    """

    def __init__(
        self,
        *,
        backbone: Backbone,
        in_feature: str,
        position_embedding: nn.Module,
        transformer: DetrTransformer,
        criterion: nn.Module,
        num_classes: int,
        num_queries: int,
        pixel_mean,
        pixel_std,
        class_loss: str = "softmax",
        aux_loss: bool = True,
        test_topk: int = 100,
        prior_prob: float = 0.01,
    ):
        if class_loss not in CLASS_LOSSES:
            raise ValueError(f"DETR: class_loss must be one of {CLASS_LOSSES}, got {class_loss!r}")
        if getattr(criterion, "class_loss", class_loss) != class_loss:
            raise ValueError(
                f"DETR: class_loss={class_loss!r} but the criterion has {criterion.class_loss!r}"
            )
        super().__init__(
            backbone=backbone,
            position_embedding=position_embedding,
            transformer=transformer,
            criterion=criterion,
            num_classes=num_classes,
            pixel_mean=pixel_mean,
            pixel_std=pixel_std,
            aux_loss=aux_loss,
            test_topk=test_topk,
            prior_prob=prior_prob,
        )
        self.in_feature = in_feature
        self.class_loss = class_loss

        hidden_dim = transformer.hidden_dim
        channels = backbone.output_shape()[in_feature].channels
        self.input_proj = nn.Conv2d(channels, hidden_dim, kernel_size=1)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.class_embed = self.class_head(hidden_dim)
        self.bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)

    def predict_masked(self, images: torch.Tensor, image_mask: torch.Tensor) -> Dict:
        """The raw predictions on padded images (N, 3, H, W) with their padding mask
        (N, H, W), True at padding: "pred_logits" (N, Q, K or K + 1) and "pred_boxes"
        (N, Q, 4) normalized (cx, cy, w, h) of the last decoder layer; with aux_loss,
        "aux_outputs" for every earlier layer."""
        src = self.input_proj(self.backbone(images)[self.in_feature])
        mask, pos = self.masked_position(image_mask, src)
        hidden_states = self.transformer(src, mask, pos, self.query_embed.weight)
        return self.set_outputs(
            self.class_embed(hidden_states), self.bbox_embed(hidden_states).sigmoid()
        )

    def select_topk(self, logits: torch.Tensor, boxes: torch.Tensor):
        """As SetPredictionDetector.select_topk; with a softmax head, each query's
        best object class scored by its softmax probability, top-k over queries."""
        if self.class_loss == "focal":
            return super().select_topk(logits, boxes)
        scores, labels = logits.softmax(-1)[..., :-1].max(-1)
        scores, queries = scores.topk(min(self.test_topk, scores.shape[1]), dim=1)
        labels = labels.gather(1, queries)
        boxes_xyxy = box_convert(boxes, "cxcywh", "xyxy").gather(
            1, queries[..., None].expand(-1, -1, 4)
        )
        return scores, labels, boxes_xyxy

"""Deformable DETR as a detectron2 meta-architecture."""

import copy
from typing import Dict, Sequence

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.structures import ImageList
from torch import nn

from ...export.precision import set_inference_precision
from ..criterion import SetCriterion
from ..deformable_transformer import DeformableTransformer, refine_box
from ..matcher import HungarianMatcher
from ..position_encoding import PositionEmbeddingSine
from .set_prediction import MLP, SetPredictionDetector

__all__ = ["DeformableDETR"]


def _input_projection(
    in_channels: int, hidden_dim: int, kernel_size: int, stride: int, norm_groups: int
):
    conv = nn.Conv2d(in_channels, hidden_dim, kernel_size, stride=stride, padding=kernel_size // 2)
    nn.init.xavier_uniform_(conv.weight, gain=1)
    nn.init.zeros_(conv.bias)
    return nn.Sequential(conv, nn.GroupNorm(norm_groups, hidden_dim))


@META_ARCH_REGISTRY.register()
class DeformableDETR(SetPredictionDetector):
    """Deformable DETR (Zhu et al., ICLR 2021): single- or multi-scale, with
    optional iterative box refinement and two-stage proposals.

    Inputs follow detectron2: a list of dicts with "image" (C, H, W) in the
    configured format, "height"/"width" to rescale predictions to, and
    "instances" (gt_boxes, gt_classes) in training. Outputs: losses in training,
    else a list of {"instances": Instances(pred_boxes, scores, pred_classes)}.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        in_features: Sequence[str],
        position_embedding: nn.Module,
        transformer: DeformableTransformer,
        criterion: nn.Module,
        num_classes: int,
        num_queries: int,
        num_feature_levels: int,
        with_box_refine: bool,
        two_stage: bool,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        aux_loss: bool = True,
        test_topk: int = 100,
        prior_prob: float = 0.01,
        input_proj_norm_groups: int = 32,
        refined_box_size_bias: float = -2.0,
        inference_precision: str = "fp32",
    ):
        """
        Args:
            backbone: a detectron2 backbone; in_features: its outputs fed to the
                transformer (["res3", "res4", "res5"], or ["res5"] for single-scale).
            position_embedding: maps a padding mask (N, H, W) to (N, C, H, W).
            num_feature_levels: levels of the transformer; levels beyond in_features
                come from 3x3 stride-2 convolutions on the last one.
            with_box_refine: iterative box refinement, one box/class head per layer.
            two_stage: decoder queries from encoder proposals.
            aux_loss: losses on every decoder layer, not only the last.
            test_topk: detections kept per image, over queries x classes.
            prior_prob: initial foreground probability of the class heads.
            refined_box_size_bias: initial bias of the predicted box size logits (w, h).
            inference_precision: "fp32", or "bf16" (bfloat16 autocast with the layers
                that place samples and boxes in float32; deformable_detr.export.precision).
        """
        if two_stage != transformer.two_stage:
            raise ValueError(
                f"two_stage={two_stage} but the transformer has two_stage={transformer.two_stage}"
            )
        if num_feature_levels != transformer.level_embed.shape[0]:
            raise ValueError(
                f"num_feature_levels={num_feature_levels} but the transformer has "
                f"{transformer.level_embed.shape[0]}"
            )
        if len(in_features) > num_feature_levels:
            raise ValueError(
                f"{len(in_features)} in_features for {num_feature_levels} feature levels"
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
        self.in_features = list(in_features)
        self.num_queries = num_queries
        self.num_feature_levels = num_feature_levels
        self.with_box_refine = with_box_refine
        self.two_stage = two_stage

        hidden_dim = transformer.hidden_dim
        shapes = backbone.output_shape()
        channels = [shapes[f].channels for f in self.in_features]
        projections = [
            _input_projection(c, hidden_dim, 1, 1, input_proj_norm_groups) for c in channels
        ]
        in_channels = channels[-1]
        for _ in range(num_feature_levels - len(channels)):
            projections.append(
                _input_projection(in_channels, hidden_dim, 3, 2, input_proj_norm_groups)
            )
            in_channels = hidden_dim
        self.input_proj = nn.ModuleList(projections)
        if not two_stage:
            self.query_embed = nn.Embedding(num_queries, hidden_dim * 2)

        class_embed = self.class_head(hidden_dim)
        bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        nn.init.zeros_(bbox_embed.layers[-1].weight)
        nn.init.zeros_(bbox_embed.layers[-1].bias)
        num_pred = transformer.decoder.num_layers + (1 if two_stage else 0)
        if with_box_refine:
            self.class_embed = nn.ModuleList(copy.deepcopy(class_embed) for _ in range(num_pred))
            self.bbox_embed = nn.ModuleList(copy.deepcopy(bbox_embed) for _ in range(num_pred))
            # only the first layer predicts a size from scratch; later ones refine it
            nn.init.constant_(self.bbox_embed[0].layers[-1].bias[2:], refined_box_size_bias)
        else:
            nn.init.constant_(bbox_embed.layers[-1].bias[2:], refined_box_size_bias)
            self.class_embed = nn.ModuleList([class_embed] * num_pred)  # shared across layers
            self.bbox_embed = nn.ModuleList([bbox_embed] * num_pred)
        if two_stage:
            for head in self.bbox_embed:
                nn.init.zeros_(head.layers[-1].bias[2:])
        set_inference_precision(self, inference_precision)

    @classmethod
    def from_config(cls, cfg):
        dd = cfg.MODEL.DEFORMABLE_DETR
        backbone = build_backbone(cfg, ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN)))
        transformer = DeformableTransformer(
            hidden_dim=dd.HIDDEN_DIM,
            num_heads=dd.NUM_HEADS,
            num_encoder_layers=dd.NUM_ENCODER_LAYERS,
            num_decoder_layers=dd.NUM_DECODER_LAYERS,
            dim_feedforward=dd.DIM_FEEDFORWARD,
            dropout=dd.DROPOUT,
            num_feature_levels=dd.NUM_FEATURE_LEVELS,
            enc_num_points=dd.ENC_NUM_POINTS,
            dec_num_points=dd.DEC_NUM_POINTS,
            two_stage=dd.TWO_STAGE,
            two_stage_num_proposals=dd.NUM_QUERIES,
            proposal_base_size=dd.PROPOSAL_BASE_SIZE,
            proposal_temperature=dd.PROPOSAL_TEMPERATURE,
            msda_backend=dd.MSDA_BACKEND,
            encoder_ffn_row_blocks=dd.ENCODER_FFN_ROW_BLOCKS,
        )
        matcher = HungarianMatcher(
            cost_class=dd.COST_CLASS,
            cost_bbox=dd.COST_BBOX,
            cost_giou=dd.COST_GIOU,
            focal_alpha=dd.FOCAL_ALPHA,
            focal_gamma=dd.FOCAL_GAMMA,
        )
        criterion = SetCriterion(
            num_classes=dd.NUM_CLASSES,
            matcher=matcher,
            weight_dict={
                "loss_ce": dd.CLASS_WEIGHT,
                "loss_bbox": dd.BBOX_WEIGHT,
                "loss_giou": dd.GIOU_WEIGHT,
            },
            focal_alpha=dd.FOCAL_ALPHA,
            focal_gamma=dd.FOCAL_GAMMA,
        )
        return {
            "backbone": backbone,
            "in_features": dd.IN_FEATURES,
            "position_embedding": PositionEmbeddingSine(
                num_pos_feats=dd.HIDDEN_DIM // 2,
                temperature=dd.POSITION_TEMPERATURE,
                normalize=True,
                offset=dd.POSITION_OFFSET,
            ),
            "transformer": transformer,
            "criterion": criterion,
            "num_classes": dd.NUM_CLASSES,
            "num_queries": dd.NUM_QUERIES,
            "num_feature_levels": dd.NUM_FEATURE_LEVELS,
            "with_box_refine": dd.WITH_BOX_REFINE,
            "two_stage": dd.TWO_STAGE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "aux_loss": dd.AUX_LOSS,
            "test_topk": dd.TEST_TOPK,
            "prior_prob": dd.PRIOR_PROB,
            "inference_precision": dd.INFERENCE_PRECISION,
        }

    def feature_levels(self, images: ImageList):
        """The transformer's inputs: per level the projected map (N, C, H_l, W_l),
        its padding mask (N, H_l, W_l) and position embedding (N, C, H_l, W_l)."""
        return self.masked_feature_levels(images.tensor, self.padding_mask(images))

    def masked_feature_levels(self, images: torch.Tensor, image_mask: torch.Tensor):
        """feature_levels of padded images (N, 3, H, W) with their padding mask (N, H, W)."""
        features = self.backbone(images)
        srcs, masks, positions = [], [], []
        for level in range(self.num_feature_levels):
            if level < len(self.in_features):
                src = self.input_proj[level](features[self.in_features[level]])
            elif level == len(self.in_features):
                src = self.input_proj[level](features[self.in_features[-1]])
            else:
                src = self.input_proj[level](srcs[-1])
            mask, position = self.masked_position(image_mask, src)
            srcs.append(src)
            masks.append(mask)
            positions.append(position)
        return srcs, masks, positions

    def predict_masked(self, images: torch.Tensor, image_mask: torch.Tensor) -> Dict:
        """The raw predictions on padded images (N, 3, H, W) with their padding mask
        (N, H, W), True at padding.

        Returns:
            "pred_logits" (N, Q, K) and "pred_boxes" (N, Q, 4) normalized (cx, cy, w, h)
            of the last decoder layer; with aux_loss, "aux_outputs": the same for
            every earlier layer; in two-stage, "enc_outputs": the encoder proposals'
            (N, S, K) logits and (N, S, 4) boxes (invalid proposals have boxes of 1).
        """
        srcs, masks, positions = self.masked_feature_levels(images, image_mask)
        query_embed = None if self.two_stage else self.query_embed.weight
        hidden_states, references, enc_logits, enc_boxes_unact = self.transformer(
            srcs,
            masks,
            positions,
            query_embed,
            self.class_embed,
            self.bbox_embed,
            self.with_box_refine,
        )
        logits, boxes = [], []
        for layer in range(hidden_states.shape[0]):
            logits.append(self.class_embed[layer](hidden_states[layer]))
            boxes.append(
                refine_box(
                    self.bbox_embed[layer](hidden_states[layer]), references[layer]
                ).sigmoid()
            )
        outputs = self.set_outputs(logits, boxes)
        if self.two_stage:
            outputs["enc_outputs"] = {
                "pred_logits": enc_logits,
                "pred_boxes": enc_boxes_unact.sigmoid(),
            }
        return outputs

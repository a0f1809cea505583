"""A small Deformable DETR (ResNet-18, narrow transformer) for fast CPU tests, built
as every tool builds its model (deformable_detr.config.build.build_model)."""

import torch
from detectron2.config import LazyCall as L
from detectron2.modeling.backbone import BasicStem, ResNet
from detectron2.structures import Boxes, Instances
from omegaconf import OmegaConf

from deformable_detr.config.build import build_model as build_configured_model
from deformable_detr.modeling.criterion import SetCriterion
from deformable_detr.modeling.deformable_transformer import DeformableTransformer
from deformable_detr.modeling.matcher import HungarianMatcher
from deformable_detr.modeling.meta_arch.deformable_detr import DeformableDETR
from deformable_detr.modeling.position_encoding import PositionEmbeddingSine

VARIANTS = {
    "single_scale": dict(
        in_features=["res5"], num_feature_levels=1, with_box_refine=False, two_stage=False
    ),
    "multi_scale": dict(
        in_features=["res3", "res4", "res5"],
        num_feature_levels=4,
        with_box_refine=False,
        two_stage=False,
    ),
    "box_refine": dict(
        in_features=["res3", "res4", "res5"],
        num_feature_levels=4,
        with_box_refine=True,
        two_stage=False,
    ),
    "two_stage": dict(
        in_features=["res3", "res4", "res5"],
        num_feature_levels=4,
        with_box_refine=True,
        two_stage=True,
    ),
}


def resnet(depth, out_features, norm="FrozenBN"):
    return L(ResNet)(
        stem=L(BasicStem)(in_channels=3, out_channels=64, norm=norm),
        stages=L(ResNet.make_default_stages)(
            depth=depth, norm=norm, **({"stride_in_1x1": False} if depth >= 50 else {})
        ),
        out_features=out_features,
        freeze_at=2,
    )


# The paper's sizes (R-50, 6+6 layers, 256 channels, 8 heads, FFN 1024, 300 queries)
PAPER_SIZES = dict(depth=50, hidden_dim=256, num_queries=300, layers=6, ffn=1024, heads=8)


def build_model(
    variant,
    num_classes=5,
    depth=18,
    hidden_dim=32,
    num_queries=10,
    layers=2,
    ffn=64,
    heads=4,
    dropout=0.0,
    norm_groups=None,
    encoder_ffn_row_blocks=1,
):
    """The variant's model with random weights, in training mode."""
    v = VARIANTS[variant]
    transformer = L(DeformableTransformer)(
        hidden_dim=hidden_dim,
        num_heads=heads,
        num_encoder_layers=layers,
        num_decoder_layers=layers,
        dim_feedforward=ffn,
        dropout=dropout,
        num_feature_levels=v["num_feature_levels"],
        two_stage=v["two_stage"],
        two_stage_num_proposals=num_queries,
        encoder_ffn_row_blocks=encoder_ffn_row_blocks,
    )
    criterion = L(SetCriterion)(
        num_classes=num_classes,
        matcher=L(HungarianMatcher)(),
        weight_dict={"loss_ce": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0},
    )
    # transformer and criterion first: their random weights are drawn before the backbone's
    model = L(DeformableDETR)(
        transformer=transformer,
        criterion=criterion,
        backbone=resnet(depth, v["in_features"]),
        in_features=v["in_features"],
        position_embedding=L(PositionEmbeddingSine)(num_pos_feats=hidden_dim // 2),
        num_classes=num_classes,
        num_queries=num_queries,
        num_feature_levels=v["num_feature_levels"],
        with_box_refine=v["with_box_refine"],
        two_stage=v["two_stage"],
        pixel_mean=[123.675, 116.280, 103.530],
        pixel_std=[58.395, 57.120, 57.375],
        test_topk=7,
        input_proj_norm_groups=norm_groups or (8 if hidden_dim < 256 else 32),
    )
    cfg = OmegaConf.create({"model": model})
    return build_configured_model(cfg, weights=None, device="cpu").train()


def build_model_and_hf_peer(variant, num_classes=5, num_queries=12):
    """A tiny transformer on ResNet-50 with HF's 32 GroupNorm groups, and HF
    transformers' model shaped like it (random weights of its own)."""
    from deformable_detr.checkpoint.hf_peer import build_hf_peer

    torch.manual_seed(0)
    ours = build_model(
        variant,
        num_classes=num_classes,
        depth=50,
        hidden_dim=64,
        num_queries=num_queries,
        norm_groups=32,
    )
    return ours, build_hf_peer(ours)


def detection_batch(sizes, num_classes=5, with_targets=True, seed=0):
    """A batch of random images of the (H, W) `sizes`, as the model takes them,
    each with two ground-truth boxes when with_targets."""
    generator = torch.Generator().manual_seed(seed)
    batch = []
    for h, w in sizes:
        x = {
            "image": torch.randint(
                0, 256, (3, h, w), generator=generator, dtype=torch.uint8
            ).float(),
            "height": h,
            "width": w,
        }
        if with_targets:
            instances = Instances((h, w))
            instances.gt_boxes = Boxes(
                torch.tensor([[4.0, 6.0, w / 2, h / 2], [w / 3, h / 4, w - 2.0, h - 3.0]])
            )
            instances.gt_classes = torch.tensor([1, num_classes - 1])
            x["instances"] = instances
        batch.append(x)
    return batch

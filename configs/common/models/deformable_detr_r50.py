# Multi-scale Deformable DETR, ResNet-50 (torchvision layout, frozen BN, stem and
# res2 frozen), the paper's sizes, losses and initialisation.
from detectron2.config import LazyCall as L
from detectron2.modeling.backbone import BasicStem, ResNet

from deformable_detr.modeling.criterion import SetCriterion
from deformable_detr.modeling.deformable_transformer import DeformableTransformer
from deformable_detr.modeling.matcher import HungarianMatcher
from deformable_detr.modeling.meta_arch.deformable_detr import DeformableDETR
from deformable_detr.modeling.position_encoding import PositionEmbeddingSine

model = L(DeformableDETR)(
    backbone=L(ResNet)(
        stem=L(BasicStem)(in_channels=3, out_channels=64, norm="FrozenBN"),
        stages=L(ResNet.make_default_stages)(depth=50, stride_in_1x1=False, norm="FrozenBN"),
        out_features=["res3", "res4", "res5"],
        freeze_at=2,
    ),
    in_features=["res3", "res4", "res5"],
    position_embedding=L(PositionEmbeddingSine)(
        num_pos_feats=128, temperature=10000.0, normalize=True, offset=-0.5
    ),
    transformer=L(DeformableTransformer)(
        hidden_dim=256,
        num_heads=8,
        num_encoder_layers=6,
        num_decoder_layers=6,
        dim_feedforward=1024,
        dropout=0.1,
        num_feature_levels="${..num_feature_levels}",
        enc_num_points=4,
        dec_num_points=4,
        two_stage="${..two_stage}",
        two_stage_num_proposals="${..num_queries}",
        proposal_base_size=0.05,
        proposal_temperature=10000.0,
        msda_backend="auto",
        # the encoder FFN's rows in this many blocks at inference (1: at once); 4 makes the
        # int8 export faster on CPUs without VNNI (docs/benchmarks.md)
        encoder_ffn_row_blocks=1,
    ),
    criterion=L(SetCriterion)(
        num_classes="${..num_classes}",
        matcher=L(HungarianMatcher)(
            cost_class=2.0, cost_bbox=5.0, cost_giou=2.0, focal_alpha=0.25, focal_gamma=2.0
        ),
        weight_dict={"loss_ce": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0},
        focal_alpha=0.25,
        focal_gamma=2.0,
    ),
    num_classes=80,
    num_queries=300,
    num_feature_levels=4,
    with_box_refine=False,
    two_stage=False,
    pixel_mean=[123.675, 116.280, 103.530],
    pixel_std=[58.395, 57.120, 57.375],
    aux_loss=True,
    test_topk=100,
    # "bf16": inference under bfloat16 autocast (deformable_detr.export.precision)
    inference_precision="fp32",
    prior_prob=0.01,
)

# DETR, ResNet-50 C5 (torchvision layout, frozen BN, stem and res2 frozen), the
# DETR paper's sizes and losses: 6+6 layers, hidden 256, FFN 2048, 100 queries,
# softmax cross-entropy with the no-object class weighted 0.1, matcher costs
# class 1, L1 5, GIoU 2, auxiliary losses.
from detectron2.config import LazyCall as L
from detectron2.modeling.backbone import BasicStem, ResNet

from deformable_detr.modeling.criterion import SetCriterion
from deformable_detr.modeling.detr_transformer import DetrTransformer
from deformable_detr.modeling.matcher import HungarianMatcher
from deformable_detr.modeling.meta_arch.detr import DETR
from deformable_detr.modeling.position_encoding import PositionEmbeddingSine

model = L(DETR)(
    backbone=L(ResNet)(
        stem=L(BasicStem)(in_channels=3, out_channels=64, norm="FrozenBN"),
        stages=L(ResNet.make_default_stages)(depth=50, stride_in_1x1=False, norm="FrozenBN"),
        out_features=["res5"],
        freeze_at=2,
    ),
    in_feature="res5",
    position_embedding=L(PositionEmbeddingSine)(
        num_pos_feats=128, temperature=10000.0, normalize=True, offset=0.0
    ),
    transformer=L(DetrTransformer)(
        hidden_dim=256,
        num_heads=8,
        num_encoder_layers=6,
        num_decoder_layers=6,
        dim_feedforward=2048,
        dropout=0.1,
    ),
    criterion=L(SetCriterion)(
        num_classes="${..num_classes}",
        matcher=L(HungarianMatcher)(
            cost_class=1.0, cost_bbox=5.0, cost_giou=2.0, class_loss="${...class_loss}"
        ),
        weight_dict={"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0},
        class_loss="${..class_loss}",
        no_object_weight=0.1,
    ),
    num_classes=80,
    num_queries=100,
    class_loss="softmax",
    pixel_mean=[123.675, 116.280, 103.530],
    pixel_std=[58.395, 57.120, 57.375],
    aux_loss=True,
    test_topk=100,
)


def make_detr_plus(model):
    """The Deformable DETR paper's "DETR+" changes to a DETR model config: its focal
    loss (alpha 0.25, gamma 2; matcher class cost 2, loss weight 2) and 300 queries."""
    model.class_loss = "focal"
    model.num_queries = 300
    model.test_topk = 100
    model.criterion.matcher.cost_class = 2.0
    model.criterion.weight_dict["loss_ce"] = 2.0
    return model

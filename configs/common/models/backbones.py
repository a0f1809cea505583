# The backbones beside the paper's ResNet-50, each with the input normalization
# and the ImageNet (or MAE) weights it was pretrained with. A backbone here
# outputs the three levels at strides 8, 16 and 32 that the model takes (as
# the paper takes res3-res5 from ResNet); the model adds the fourth, strided one.
from functools import partial

from detectron2.config import LazyCall as L
from detectron2.modeling.backbone import BasicStem, ResNet, SimpleFeaturePyramid, SwinTransformer
from detectron2.modeling.backbone.vit import ViT
from torch import nn

from deformable_detr.modeling.backbones import make_resnet_stages

# ImageNet statistics of detectron2's BGR (caffe2-converted) ResNet weights; Swin and
# ViT take RGB with the statistics of the R-50 configs
BGR_MEAN = [103.530, 116.280, 123.675]
MSRA_STD = [1.0, 1.0, 1.0]  # MSRA's weights take unscaled pixels
FAIR_STD = [57.375, 57.120, 58.395]


def resnet(depth, **stages):
    """ResNet/ResNeXt with frozen BN, stem and res2 frozen, res3-res5 out."""
    return L(ResNet)(
        stem=L(BasicStem)(in_channels=3, out_channels=64, norm="FrozenBN"),
        stages=L(make_resnet_stages)(depth=depth, norm="FrozenBN", **stages),
        out_features=["res3", "res4", "res5"],
        freeze_at=2,
    )


# detectron2's MSRA R-101 (caffe2 weights: BGR input, std 1, stride in the 1x1 conv)
R101 = resnet(101, stride_in_1x1=True)
R101_WEIGHTS = "detectron2://ImageNetPretrained/MSRA/R-101.pkl"

# detectron2's FAIR ResNeXt-101 32x8d (BGR input)
X101 = resnet(101, num_groups=32, width_per_group=8, stride_in_1x1=False)
# the paper's strongest backbone: deformable 3x3 convolutions in res3-res5 (DCNv1, as
# detectron2's and mmdetection's "dconv c3-c5" models; deform_modulated=True gives DCNv2)
X101_DCN = resnet(
    101,
    num_groups=32,
    width_per_group=8,
    stride_in_1x1=False,
    deform_on_per_stage=[False, True, True, True],
    deform_modulated=False,
    deform_num_groups=1,
)
X101_WEIGHTS = "detectron2://ImageNetPretrained/FAIR/X-101-32x8d.pkl"


def swin(embed_dim, depths, num_heads, window_size, pretrain_img_size, drop_path_rate):
    """detectron2's SwinTransformer, stages 1-3 out (p1, p2, p3 at strides 8, 16, 32)."""
    return L(SwinTransformer)(
        pretrain_img_size=pretrain_img_size,
        embed_dim=embed_dim,
        depths=depths,
        num_heads=num_heads,
        window_size=window_size,
        drop_path_rate=drop_path_rate,
        out_indices=(1, 2, 3),
    )


SWIN_FEATURES = ["p1", "p2", "p3"]
# the official Swin release (ImageNet-1k for T, ImageNet-22k for B and L); convert with
# tools/convert_backbone_checkpoint.py --source swin (--source timm_swin for timm's files)
SWIN_T = swin(96, (2, 2, 6, 2), (3, 6, 12, 24), 7, 224, drop_path_rate=0.2)
SWIN_T_WEIGHTS = (
    "https://github.com/SwinTransformer/storage/releases/download/v1.0.0/"
    "swin_tiny_patch4_window7_224.pth"
)
SWIN_B = swin(128, (2, 2, 18, 2), (4, 8, 16, 32), 7, 224, drop_path_rate=0.3)
SWIN_B_WEIGHTS = (
    "https://github.com/SwinTransformer/storage/releases/download/v1.0.0/"
    "swin_base_patch4_window7_224_22k.pth"
)
SWIN_L = swin(192, (2, 2, 18, 2), (6, 12, 24, 48), 12, 384, drop_path_rate=0.3)
SWIN_L_WEIGHTS = (
    "https://github.com/SwinTransformer/storage/releases/download/v1.0.0/"
    "swin_large_patch4_window12_384_22k.pth"
)

# ViTDet's ViT-B (window attention, 4 global blocks, relative positions) with its
# simple feature pyramid at strides 8, 16, 32 (p3, p4, p5); no square padding,
# so that the model's padding masks stay aligned with the features
VIT_B = L(SimpleFeaturePyramid)(
    net=L(ViT)(
        img_size=1024,
        patch_size=16,
        embed_dim=768,
        depth=12,
        num_heads=12,
        drop_path_rate=0.1,
        window_size=14,
        mlp_ratio=4,
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        window_block_indexes=[0, 1, 3, 4, 6, 7, 9, 10],
        residual_block_indexes=[],
        use_rel_pos=True,
        out_feature="last_feat",
    ),
    in_feature="last_feat",
    out_channels=256,
    scale_factors=(2.0, 1.0, 0.5),
    top_block=None,
    norm="LN",
    square_pad=0,
)
VIT_B_FEATURES = ["p3", "p4", "p5"]
# MAE's ImageNet-1k pretraining, as ViTDet uses it; convert with
# tools/convert_backbone_checkpoint.py --source vit
VIT_B_WEIGHTS = "detectron2://ImageNetPretrained/MAE/mae_pretrain_vit_base.pth"

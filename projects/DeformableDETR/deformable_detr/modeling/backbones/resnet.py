"""ResNet and ResNeXt stages for LazyConfigs, with deformable convolutions that
run on torchvision's `deform_conv2d` (CPU and CUDA, with backward) instead of
detectron2's compiled extension."""

from typing import List, Optional, Sequence

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.layers import CNNBlockBase, Conv2d, get_norm
from detectron2.modeling.backbone import BottleneckBlock, ResNet
from detectron2.modeling.backbone.resnet import DeformBottleneckBlock
from torch import nn
from torchvision.ops import deform_conv2d

__all__ = [
    "TorchvisionDeformConv",
    "TorchvisionDeformBottleneckBlock",
    "make_resnet_stages",
]

RESNET_BLOCKS = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}


class TorchvisionDeformConv(nn.Module):
    """Deformable convolution (DCNv1; DCNv2 when given a mask) on torchvision's
    deform_conv2d, with the parameter names of detectron2's DeformConv and
    ModulatedDeformConv (`weight`, `norm`), whose compiled kernels it replaces.

    forward(x (N, C_in, H, W), offset (N, 2 * deformable_groups * kh * kw, H_out, W_out)
    as (dy, dx) pairs per kernel position, the order of detectron2's and
    torchvision's kernels, mask (N, deformable_groups * kh * kw, H_out, W_out) in
    [0, 1] or None) -> (N, C_out, H_out, W_out).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        norm: Optional[nn.Module] = None,
    ):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels={in_channels} and out_channels={out_channels} must be "
                f"multiples of groups={groups}"
            )
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels // groups, kernel_size, kernel_size)
        )
        self.bias = None  # as detectron2's: the norm follows
        self.norm = norm
        weight_init.c2_msra_fill(self)

    def forward(self, x, offset, mask=None):
        x = deform_conv2d(
            x,
            offset,
            self.weight,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            mask=mask,
        )
        return x if self.norm is None else self.norm(x)


class TorchvisionDeformBottleneckBlock(DeformBottleneckBlock):
    """detectron2's DeformBottleneckBlock (same arguments, parameter names and
    forward) with its 3x3 deformable convolution on torchvision's op: detectron2
    builds its own only with its compiled extension, so this __init__ builds the
    block's layers itself."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        bottleneck_channels: int,
        stride: int = 1,
        num_groups: int = 1,
        norm: str = "BN",
        stride_in_1x1: bool = False,
        dilation: int = 1,
        deform_modulated: bool = False,
        deform_num_groups: int = 1,
    ):
        CNNBlockBase.__init__(self, in_channels, out_channels, stride)
        self.deform_modulated = deform_modulated
        self.shortcut = None
        if in_channels != out_channels:
            self.shortcut = Conv2d(
                in_channels,
                out_channels,
                kernel_size=1,
                stride=stride,
                bias=False,
                norm=get_norm(norm, out_channels),
            )
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = Conv2d(
            in_channels,
            bottleneck_channels,
            kernel_size=1,
            stride=stride_1x1,
            bias=False,
            norm=get_norm(norm, bottleneck_channels),
        )
        # (dy, dx) per kernel position, plus a mask logit for DCNv2
        offset_channels = (27 if deform_modulated else 18) * deform_num_groups
        self.conv2_offset = Conv2d(
            bottleneck_channels,
            offset_channels,
            kernel_size=3,
            stride=stride_3x3,
            padding=dilation,
            dilation=dilation,
        )
        self.conv2 = TorchvisionDeformConv(
            bottleneck_channels,
            bottleneck_channels,
            kernel_size=3,
            stride=stride_3x3,
            padding=dilation,
            dilation=dilation,
            groups=num_groups,
            norm=get_norm(norm, bottleneck_channels),
        )
        self.conv3 = Conv2d(
            bottleneck_channels,
            out_channels,
            kernel_size=1,
            bias=False,
            norm=get_norm(norm, out_channels),
        )
        for layer in (self.conv1, self.conv3, self.shortcut):
            if layer is not None:
                weight_init.c2_msra_fill(layer)
        # zero offsets (and mask logits): the block starts as its plain bottleneck
        nn.init.zeros_(self.conv2_offset.weight)
        nn.init.zeros_(self.conv2_offset.bias)


def make_resnet_stages(
    depth: int,
    *,
    num_groups: int = 1,
    width_per_group: int = 64,
    stem_out_channels: int = 64,
    res2_out_channels: int = 256,
    stride_in_1x1: bool = False,
    norm: str = "FrozenBN",
    deform_on_per_stage: Sequence[bool] = (False, False, False, False),
    deform_modulated: bool = False,
    deform_num_groups: int = 1,
) -> List[List[nn.Module]]:
    """The res2..res5 stages of a ResNet (num_groups=1) or ResNeXt
    (num_groups x width_per_group, e.g. 32x8d), as detectron2's
    build_resnet_backbone makes them, for `ResNet(stem, stages, ...)`.

    Args:
        depth: 50, 101 or 152.
        stem_out_channels, res2_out_channels: as detectron2's MODEL.RESNETS keys;
            the output channels double with every stage from res2_out_channels.
        deform_on_per_stage: for res2..res5, whether the 3x3 convolutions are
            deformable (torchvision's deform_conv2d); DCNv2 when deform_modulated.
    """
    if depth not in RESNET_BLOCKS:
        raise ValueError(f"depth={depth}; expected one of {sorted(RESNET_BLOCKS)}")
    if len(deform_on_per_stage) != 4:
        raise ValueError(
            f"deform_on_per_stage has {len(deform_on_per_stage)} entries; expected 4 (res2..res5)"
        )
    stages = []
    in_channels, out_channels = stem_out_channels, res2_out_channels
    bottleneck_channels = num_groups * width_per_group
    for num_blocks, deform in zip(RESNET_BLOCKS[depth], deform_on_per_stage):
        block_kwargs = dict(
            bottleneck_channels=bottleneck_channels,
            num_groups=num_groups,
            norm=norm,
            stride_in_1x1=stride_in_1x1,
        )
        if deform:
            block_kwargs.update(
                deform_modulated=deform_modulated, deform_num_groups=deform_num_groups
            )
        stages.append(
            ResNet.make_stage(
                block_class=TorchvisionDeformBottleneckBlock if deform else BottleneckBlock,
                num_blocks=num_blocks,
                stride_per_block=[1 if not stages else 2] + [1] * (num_blocks - 1),
                in_channels=in_channels,
                out_channels=out_channels,
                **block_kwargs,
            )
        )
        in_channels, out_channels = out_channels, out_channels * 2
        bottleneck_channels *= 2
    return stages

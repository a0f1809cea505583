"""R50's last 512 -> 2048 int8 convolution at the 25x42 input of an 800x1333 image
(uint8 output with a residual sum, as the int8 model fuses it), its weight packed for
the traced shape as torchao packs it, then for the shape
deformable_detr.export.weight_packing.unpadded_packing_shape picks, and the weight
reorders oneDNN runs in its calls (read by tools/profile_inference.py's
onednn_reorders from oneDNN's verbose output). Used by test_export.py.
"""

import torch

from deformable_detr.export.weight_packing import unpadded_packing_shape

from ..scripts import load_script

IN_CHANNELS, OUT_CHANNELS, SIZE = 512, 2048, (25, 42)
STRIDE, PADDING, DILATION, GROUPS = [1, 1], [0, 0], [1, 1], 1
INPUT_SCALE, OUTPUT_SCALE, OUTPUT_ZERO_POINT = 0.05, 0.1, 126


def pack(weight, scales, shape):
    return torch.ops.onednn.qconv_prepack(
        weight, scales, INPUT_SCALE, 0, STRIDE, PADDING, DILATION, GROUPS, shape
    )


def convolution(packed, weight_scales, image, residual):
    """uint8 output, residual summed into it, then ReLU (the fused bottleneck end)."""
    zero_points = torch.zeros(OUT_CHANNELS, dtype=torch.int64)
    bias = torch.zeros(OUT_CHANNELS)
    return torch.ops.onednn.qconv2d_pointwise.binary(
        image, INPUT_SCALE, 0, packed, weight_scales, zero_points, residual.clone(), bias,
        STRIDE, PADDING, DILATION, GROUPS, OUTPUT_SCALE, OUTPUT_ZERO_POINT, None,
        0.45, OUTPUT_ZERO_POINT, "sum", 1.0, "relu", [], "",
    )  # fmt: skip


def reorders_per_packing() -> dict:
    """{"traced": {"padded": bool, "reorders": [...]}, "chosen": {...}}: whether each
    packed layout holds padding, and the weight reorders oneDNN ran in two calls of
    the convolution (oneDNN's "source -> destination" layouts, one per reorder)."""
    onednn_reorders = load_script("tools/profile_inference.py").onednn_reorders
    torch.manual_seed(0)
    height, width = SIZE
    weight = torch.randint(-127, 128, (OUT_CHANNELS, IN_CHANNELS, 1, 1), dtype=torch.int8)
    scales = torch.rand(OUT_CHANNELS) * 0.01 + 0.001
    shape = [1, IN_CHANNELS, height, width]
    image = torch.randint(0, 256, shape, dtype=torch.uint8)
    image = image.contiguous(memory_format=torch.channels_last)
    residual = torch.randint(0, 256, (1, OUT_CHANNELS, height, width), dtype=torch.uint8)
    residual = residual.contiguous(memory_format=torch.channels_last)

    def packed_bytes(candidate):
        return torch.ops.mkldnn._nbytes(pack(weight, scales, candidate))

    def two_calls():
        for _ in range(2):
            convolution(packed, scales, image, residual)

    results = {}
    weight_dims = f"{OUT_CHANNELS}x{IN_CHANNELS}x1x1"
    chosen = unpadded_packing_shape(shape, packed_bytes)
    for name, packed_for in (("traced", shape), ("chosen", chosen)):
        packed = pack(weight, scales, packed_for)
        convolution(packed, scales, image, residual)  # oneDNN creates its primitive
        reorders = onednn_reorders(two_calls)
        results[name] = {
            "padded": packed_bytes(packed_for) > weight.numel(),
            "reorders": [
                layouts
                for (layouts, dims), (count, _) in reorders.items()
                if dims == weight_dims
                for _ in range(count)
            ],
        }
    return results

"""Runs R50's last 512 -> 2048 int8 convolution at the 25x42 input of an 800x1333
image (uint8 output with a residual sum, as the int8 model fuses it), its weight
packed for the traced shape as torchao packs it, then for the shape
deformable_detr.export.weight_packing.unpadded_packing_shape picks, two calls each,
between marks in oneDNN's verbose output. Run by test_export.py in a fresh process
with ONEDNN_VERBOSE=1 (oneDNN reads it once, at start), which reads the output with
weight_reorders:

    ONEDNN_VERBOSE=1 python -m tests.deformable_detr.conv_weight_reorders
"""

import json
import os
import sys

import torch

from deformable_detr.export.weight_packing import unpadded_packing_shape

IN_CHANNELS, OUT_CHANNELS, SIZE = 512, 2048, (25, 42)
STRIDE, PADDING, DILATION, GROUPS = [1, 1], [0, 0], [1, 1], 1
INPUT_SCALE, OUTPUT_SCALE, OUTPUT_ZERO_POINT = 0.05, 0.1, 126
MARK = "conv_weight_reorders:"


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


def main():
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

    chosen = unpadded_packing_shape(shape, packed_bytes)
    for name, packed_for in (("traced", shape), ("chosen", chosen)):
        packed = pack(weight, scales, packed_for)
        padded = packed_bytes(packed_for) > weight.numel()
        convolution(packed, scales, image, residual)  # oneDNN creates its primitive
        print(f"{MARK}{name}:{json.dumps(padded)}", flush=True)
        for _ in range(2):
            convolution(packed, scales, image, residual)
        print(f"{MARK}end", flush=True)


def weight_reorders(verbose: str) -> dict:
    """{"traced": {"padded": bool, "reorders": [...]}, "chosen": {...}} from the output
    of a run of this module: whether each packed layout holds padding, and the weight
    reorders oneDNN ran in the two calls (oneDNN's "source -> destination" layouts)."""
    results, current = {}, None
    weight_dims = f"{OUT_CHANNELS}x{IN_CHANNELS}x1x1"
    for line in verbose.splitlines():
        if line.startswith(MARK):
            name, _, padded = line[len(MARK) :].partition(":")
            current = None if name == "end" else name
            if current:
                results[current] = {"padded": json.loads(padded), "reorders": []}
        elif current and ",exec,cpu,reorder," in line and weight_dims in line:
            layouts = [field for field in line.split(",") if field.startswith("src:")]
            results[current]["reorders"].append(layouts[0].replace(" dst:", " -> "))
    return results


if __name__ == "__main__":
    if os.environ.get("ONEDNN_VERBOSE") != "1":
        sys.exit("run with ONEDNN_VERBOSE=1: the weight reorders are read from its output")
    main()

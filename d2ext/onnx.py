"""ONNX translation of ``d2ext::ms_deform_attn`` into standard ops, for
``torch.onnx.export(..., dynamo=True, custom_translation_table=TRANSLATION_TABLE)``.

The op becomes one ``GridSample`` per level (bilinear, zero padding,
``align_corners=0``: exactly d2ext.reference), so the model runs on any ONNX
runtime without a plugin. The number of levels L, heads M, channels D and
points P are static (taken from the input shapes); each level's (H_l, W_l) and
start offset are read from ``spatial_shapes`` and ``level_start_index`` at run
time, so the image size stays dynamic.
"""

import torch
from onnxscript import opset19 as op

__all__ = ["OPSET", "TRANSLATION_TABLE", "ms_deform_attn_onnx"]

OPSET = 19  # GridSample needs >= 16, DeformConv (the DCN backbones) >= 19


def ms_deform_attn_onnx(
    value,
    spatial_shapes,
    level_start_index,
    sampling_locations,
    attention_weights,
    backend,
    reference_points=None,
    offset_scale=None,
):
    """The reference MSDA (d2ext/reference.py) in ONNX ops; `backend` is ignored.

    Args:
        value: (N, S, M, D); spatial_shapes: (L, 2) int64; level_start_index: (L,) int64.
        sampling_locations: (N, Lq, M, L, P, 2) normalized (x, y) in [0, 1], or the
            offsets where reference_points and offset_scale (N, Lq, L, 2) are given
            (d2ext.ms_deform_attn_at_offsets).
        attention_weights: (N, Lq, M, L, P).

    Returns:
        (N, Lq, M * D).
    """
    _, _, M, D = value.shape
    L, P = sampling_locations.shape[3], sampling_locations.shape[4]
    if reference_points is not None:
        frame_axes = op.Constant(value_ints=[2, 4])  # (N, Lq, L, 2) -> (N, Lq, 1, L, 1, 2)
        sampling_locations = op.Add(
            op.Unsqueeze(reference_points, frame_axes),
            op.Mul(sampling_locations, op.Unsqueeze(offset_scale, frame_axes)),
        )
    grids = op.Sub(
        op.Mul(sampling_locations, op.Constant(value_float=2.0)), op.Constant(value_float=1.0)
    )
    # (N, Lq, M, L, P, 2) -> (N, M, Lq, L, P, 2); grid_sample takes (N * M, Lq, P, 2) per level
    grids = op.Transpose(grids, perm=[0, 2, 1, 3, 4, 5])
    queries = op.Shape(grids, start=2, end=3)  # (1,) = [Lq]
    value_shape = op.Constant(value_ints=[-1, D])
    grid_shape = op.Concat(
        op.Constant(value_ints=[-1]), queries, op.Constant(value_ints=[P, 2]), axis=0
    )
    # (N, Lq, M, L, P) -> (N, M, Lq, L, P); each level's weights as (N * M, 1, Lq, P)
    weights = op.Transpose(attention_weights, perm=[0, 2, 1, 3, 4])
    weights_shape = op.Concat(
        op.Constant(value_ints=[-1, 1]), queries, op.Constant(value_ints=[P]), axis=0
    )
    # (N, S, M, D) -> (N, M, D, S)
    value = op.Transpose(value, perm=[0, 2, 3, 1])
    output = None
    for level in range(L):
        index = op.Constant(value_ints=[level])
        start = op.Gather(level_start_index, index, axis=0)
        hw = op.Reshape(op.Gather(spatial_shapes, index, axis=0), op.Constant(value_ints=[2]))
        end = op.Add(start, op.ReduceProd(hw, keepdims=1))
        value_l = op.Slice(value, start, end, op.Constant(value_ints=[3]))
        value_l = op.Reshape(value_l, op.Concat(value_shape, hw, axis=0))  # (N * M, D, H_l, W_l)
        grid_l = op.Reshape(
            op.Gather(grids, op.Constant(value_int=level), axis=3), grid_shape
        )  # (N * M, Lq, P, 2)
        sampled = op.GridSample(
            value_l, grid_l, align_corners=0, mode="bilinear", padding_mode="zeros"
        )  # (N * M, D, Lq, P)
        weights_l = op.Reshape(
            op.Gather(weights, op.Constant(value_int=level), axis=3), weights_shape
        )
        # weighted per level and summed over levels: no (N * M, D, Lq, L * P) concatenation,
        # whose copy cost as much as the sampling at 800x1333
        level_output = op.ReduceSum(
            op.Mul(sampled, weights_l), op.Constant(value_ints=[-1]), keepdims=0
        )  # (N * M, D, Lq)
        output = level_output if output is None else op.Add(output, level_output)
    output = op.Reshape(output, op.Constant(value_ints=[-1, M * D, 0]))  # (N, M * D, Lq)
    return op.Transpose(output, perm=[0, 2, 1])


TRANSLATION_TABLE = {torch.ops.d2ext.ms_deform_attn.default: ms_deform_attn_onnx}

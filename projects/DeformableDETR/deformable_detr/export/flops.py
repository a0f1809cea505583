"""FLOP counting of the MSDA op for fvcore's (jit-tracing) FlopCountAnalysis.

    from detectron2.utils.analysis import FlopCountAnalysis
    from .flops import flop_count_handles
    flops = FlopCountAnalysis(model, inputs).set_op_handle(**flop_count_handles())

Convention (fvcore's): one "flop" is one multiply-add. Per output channel d of
every (image n, query q, head m, level l, point p), bilinear sampling is a
weighted sum of the 4 neighbouring values (4 multiply-adds) and the attention
weight one more, so

    flops = N * Lq * M * L * P * D * 5

The bilinear corner weights and the pixel coordinates, computed once per sample
and shared by the D channels, are not counted (as fvcore leaves out
element-wise ops).

fvcore has no handle for aten::scaled_dot_product_attention (the decoder's
self-attention, nn.MultiheadAttention); flop_count_handles() adds one:
N * heads * Lq * S * (E + Ev) multiply-adds (Q K^T and the weighted sum of V);
and one for torchvision::deform_conv2d (the DCN backbones): the convolution's
multiply-adds, N * C_out * H_out * W_out * C_in / groups * kh * kw, plus 4 per
bilinearly sampled input value, N * C_in * kh * kw * H_out * W_out * 4.
"""

from typing import Any, Dict, List

import torch
from fvcore.nn.jit_handles import get_shape

__all__ = [
    "MSDA_OP",
    "MSDA_MACS_PER_SAMPLE",
    "msda_flops",
    "msda_flop_jit",
    "sdpa_flop_jit",
    "deform_conv2d_flop_jit",
    "flop_count_handles",
    "count_parameters",
    "flop_count_analysis",
]

MSDA_OP = "d2ext::ms_deform_attn"
MSDA_MACS_PER_SAMPLE = 5  # 4 for the bilinear interpolation + 1 for the attention weight


def msda_flops(value_shape, attention_weights_shape) -> int:
    """Multiply-adds of ms_deform_attn given value (N, S, M, D) and attention
    weights (N, Lq, M, L, P) shapes."""
    N, _, M, D = value_shape
    n, Lq, m, L, P = attention_weights_shape
    assert (n, m) == (N, M), (
        f"value {value_shape} and attention weights {attention_weights_shape} disagree"
    )
    return N * Lq * M * L * P * D * MSDA_MACS_PER_SAMPLE


def msda_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """fvcore op handle of d2ext::ms_deform_attn. `inputs` are the jit values of
    (value, spatial_shapes, level_start_index, sampling_locations,
    attention_weights, backend)."""
    return msda_flops(get_shape(inputs[0]), get_shape(inputs[4]))


def sdpa_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """fvcore op handle of aten::scaled_dot_product_attention: query (..., Lq, E),
    key (..., S, E), value (..., S, Ev)."""
    q, k, v = (get_shape(x) for x in inputs[:3])
    batch = 1
    for size in q[:-2]:
        batch *= size
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


def deform_conv2d_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """fvcore op handle of torchvision::deform_conv2d: input (N, C_in, H, W),
    weight (C_out, C_in / groups, kh, kw), output (N, C_out, H_out, W_out)."""
    n, c_in = get_shape(inputs[0])[:2]
    c_out, c_group, kh, kw = get_shape(inputs[1])
    h_out, w_out = get_shape(outputs[0])[2:]
    samples = n * c_in * kh * kw * h_out * w_out
    return n * c_out * h_out * w_out * c_group * kh * kw + 4 * samples


def flop_count_handles() -> Dict[str, Any]:
    """The op handles to pass to FlopCountAnalysis.set_op_handle(**...)."""
    return {
        MSDA_OP: msda_flop_jit,
        "aten::scaled_dot_product_attention": sdpa_flop_jit,
        "torchvision::deform_conv2d": deform_conv2d_flop_jit,
    }


def count_parameters(model: torch.nn.Module):
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def flop_count_analysis(model: torch.nn.Module, image: torch.Tensor):
    """detectron2's FlopCountAnalysis of a detectron2 model (to run in eval mode,
    under torch.no_grad) on one (3, H, W) image, with the handles above."""
    from detectron2.utils.analysis import FlopCountAnalysis

    inputs = [{"image": image, "height": image.shape[1], "width": image.shape[2]}]
    return FlopCountAnalysis(model, inputs).set_op_handle(**flop_count_handles())

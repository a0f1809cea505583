"""Pure PyTorch multi-scale deformable attention: the specification of the op.

Every other backend is tested against `ms_deform_attn_reference`, which is
built on ``torch.nn.functional.grid_sample`` (bilinear, ``align_corners=False``,
zero padding) and differentiable by autograd. `ms_deform_attn_reference_backward`
computes the same gradients explicitly, for the "torch" backend of the custom
op, whose backward runs where autograd does not record.
"""

import torch
import torch.nn.functional as F


def ms_deform_attn_reference(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Multi-scale deformable attention, computed level by level with grid_sample.

    Args:
        value: (N, S, M, D), the flattened feature maps of all levels.
        spatial_shapes: (L, 2) integer (H_l, W_l) of every level.
        level_start_index: (L,) integer offset of every level in S.
        sampling_locations: (N, Lq, M, L, P, 2), normalized (x, y); (0, 0) is the
            top-left corner of the map and (1, 1) the bottom-right one.
        attention_weights: (N, Lq, M, L, P).

    Returns:
        (N, Lq, M * D): for every query and head, the attention-weighted sum of the
        values bilinearly sampled at pixel (x * W - 0.5, y * H - 0.5), zero outside.
    """
    N, _, M, D = value.shape
    _, Lq, _, L, P, _ = sampling_locations.shape
    sampled = [
        F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False)
        for _, _, value_l, grid_l in _levels(
            value, spatial_shapes, level_start_index, sampling_locations
        )
    ]  # L x (N*M, D, Lq, P)
    # (N*M, D, Lq, L*P) * (N*M, 1, Lq, L*P) summed over L*P
    weights = attention_weights.transpose(1, 2).reshape(N * M, 1, Lq, L * P)
    output = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)
    return output.view(N, M * D, Lq).transpose(1, 2).contiguous()


def ms_deform_attn_reference_backward(
    grad_output: torch.Tensor,
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradients of `ms_deform_attn_reference` for grad_output (N, Lq, M * D)
    w.r.t. value, sampling_locations and attention_weights, level by level with
    grid_sample's own backward."""
    N, _, M, D = value.shape
    _, Lq, _, L, P, _ = sampling_locations.shape
    grad = grad_output.view(N, Lq, M, D).permute(0, 2, 3, 1).reshape(N * M, D, Lq, 1)
    weights = attention_weights.transpose(1, 2).reshape(N * M, 1, Lq, L, P)
    grad_value = torch.zeros_like(value)
    grad_grids, grad_weights = [], []
    levels = _levels(value, spatial_shapes, level_start_index, sampling_locations)
    for level, (start, area, value_l, grid_l) in enumerate(levels):
        sampled = F.grid_sample(
            value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        grad_weights.append((grad * sampled).sum(1))  # (N*M, Lq, P)
        grad_value_l, grad_grid_l = torch.ops.aten.grid_sampler_2d_backward(
            grad * weights[..., level, :], value_l, grid_l, 0, 0, False, [True, True]
        )  # (N*M, D, H, W), (N*M, Lq, P, 2); 0, 0: bilinear, zero padding
        grad_value[:, start : start + area] = grad_value_l.view(N, M, D, area).permute(0, 3, 1, 2)
        grad_grids.append(grad_grid_l)
    # (N*M, Lq, L, P, ...) -> (N, Lq, M, L, P, ...); d grid / d location = 2
    grad_locations = 2 * torch.stack(grad_grids, 2).view(N, M, Lq, L, P, 2).transpose(1, 2)
    grad_weights = torch.stack(grad_weights, 2).view(N, M, Lq, L, P).transpose(1, 2)
    return grad_value, grad_locations.contiguous(), grad_weights.contiguous()


def _levels(value, spatial_shapes, level_start_index, sampling_locations):
    """Per level: its first row in S, its H * W, the value map (N*M, D, H, W) and
    the grid_sample grid (N*M, Lq, P, 2)."""
    N, _, M, D = value.shape
    grids = 2 * sampling_locations - 1
    for level, ((H, W), start) in enumerate(
        zip(spatial_shapes.tolist(), level_start_index.tolist())
    ):
        # (N, H*W, M, D) -> (N*M, D, H, W); (N, Lq, M, P, 2) -> (N*M, Lq, P, 2)
        value_l = value[:, start : start + H * W].permute(0, 2, 3, 1).reshape(N * M, D, H, W)
        yield start, H * W, value_l, grids[:, :, :, level].transpose(1, 2).flatten(0, 1)

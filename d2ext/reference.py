"""Pure PyTorch multi-scale deformable attention: the specification of the op.

Every other backend is tested against this function. It is built on
``torch.nn.functional.grid_sample`` (bilinear, ``align_corners=False``,
zero padding), so its gradients come from autograd.
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
    grids = 2 * sampling_locations - 1
    sampled = []
    for level, ((H, W), start) in enumerate(zip(spatial_shapes.tolist(), level_start_index.tolist())):
        # (N, H*W, M, D) -> (N*M, D, H, W)
        value_l = value[:, start : start + H * W].permute(0, 2, 3, 1).reshape(N * M, D, H, W)
        # (N, Lq, M, P, 2) -> (N*M, Lq, P, 2)
        grid_l = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled.append(
            F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False)
        )  # (N*M, D, Lq, P)
    # (N*M, D, Lq, L*P) * (N*M, 1, Lq, L*P) summed over L*P
    weights = attention_weights.transpose(1, 2).reshape(N * M, 1, Lq, L * P)
    output = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)
    return output.view(N, M * D, Lq).transpose(1, 2).contiguous()

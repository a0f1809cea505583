"""The paper's multi-scale deformable attention module, built on the op."""
import math

import torch
from torch import nn

from d2ext.ops import ms_deform_attn


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention (Zhu et al., ICLR 2021, Eq. 3).

    Every query predicts, per head, level and point, a sampling offset around its
    reference point and an attention weight (softmax over levels x points), then
    sums the sampled values.

    Args:
        d_model: channels of queries and values (C); divisible by n_heads.
        n_levels: feature levels (L).
        n_heads: attention heads (M).
        n_points: sampling points per head and level (P).
        backend: the op's backend, see d2ext.ms_deform_attn.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4, *, backend: str = "auto"):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model must be divisible by n_heads, got d_model={d_model}, n_heads={n_heads}")
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.backend = backend
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self):
        """The paper's initialisation: offsets start on a ring of directions, one per
        head, at distance 1..P pixels; attention weights start uniform."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.n_heads, dtype=torch.float64) * (2.0 * math.pi / self.n_heads)
        directions = torch.stack([angles.cos(), angles.sin()], -1)
        directions = directions / directions.abs().max(-1, keepdim=True).values
        grid = directions.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        grid *= torch.arange(1, self.n_points + 1, dtype=torch.float64).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        input_flatten: torch.Tensor,
        input_spatial_shapes: torch.Tensor,
        input_level_start_index: torch.Tensor,
        input_padding_mask: torch.Tensor = None,
    ) -> torch.Tensor:
        """
        Args:
            query: (N, Lq, C).
            reference_points: (N, Lq, L, 2) normalized (x, y) points, or
                (N, Lq, L, 4) normalized (cx, cy, w, h) boxes, in which case the
                offsets are relative to the box size.
            input_flatten: (N, S, C), the flattened maps of all levels.
            input_spatial_shapes: (L, 2) int64 (H, W) of every level.
            input_level_start_index: (L,) int64 offset of every level in S.
            input_padding_mask: (N, S) bool, True at padding, or None.

        Returns:
            (N, Lq, C).
        """
        N, Lq, _ = query.shape
        _, S, _ = input_flatten.shape
        M, L, P = self.n_heads, self.n_levels, self.n_points
        if input_spatial_shapes.shape[0] != L:
            raise ValueError(f"this module has {L} levels, got spatial shapes of {input_spatial_shapes.shape[0]}")

        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(N, S, M, self.d_model // M)
        offsets = self.sampling_offsets(query).view(N, Lq, M, L, P, 2)
        weights = self.attention_weights(query).view(N, Lq, M, L * P).softmax(-1).view(N, Lq, M, L, P)

        if reference_points.shape[-1] == 2:
            # offsets are in pixels of each level: normalize by (W, H)
            normalizer = input_spatial_shapes.flip(-1).to(offsets.dtype)
            locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        elif reference_points.shape[-1] == 4:
            locations = (
                reference_points[:, :, None, :, None, :2]
                + offsets / P * reference_points[:, :, None, :, None, 2:] * 0.5
            )
        else:
            raise ValueError(
                f"reference_points must end in 2 (x, y) or 4 (cx, cy, w, h), got shape {tuple(reference_points.shape)}"
            )
        output = ms_deform_attn(
            value, input_spatial_shapes, input_level_start_index, locations, weights, backend=self.backend
        )
        return self.output_proj(output)

"""The paper's multi-scale deformable attention module, built on the op."""

import math

import torch
from torch import nn

from d2ext.ops import ms_deform_attn_at_offsets


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention (Zhu et al., ICLR 2021, Eq. 3).

    Every query predicts, per head, level and point, a sampling offset around its
    reference point and an attention weight (softmax over levels x points), then
    sums the sampled values.

    Args:
        hidden_dim: channels of queries and values (C); divisible by num_heads.
        num_levels: feature levels (L).
        num_heads: attention heads (M).
        num_points: sampling points per head and level (P).
        backend: the op's backend, see d2ext.ms_deform_attn.

    Attributes:
        sampled_value_dtype: the dtype the op samples the projected values in (it
            accumulates in float32 for half types); None, the default: the value
            projection's output dtype. Int8 inference sets bfloat16 (half the bytes
            the op gathers).
    """

    def __init__(
        self,
        hidden_dim: int = 256,
        num_levels: int = 4,
        num_heads: int = 8,
        num_points: int = 4,
        *,
        backend: str = "auto",
    ):
        super().__init__()
        if hidden_dim % num_heads != 0:
            raise ValueError(
                f"hidden_dim must be divisible by num_heads, got hidden_dim={hidden_dim}, "
                f"num_heads={num_heads}"
            )
        self.hidden_dim = hidden_dim
        self.num_levels = num_levels
        self.num_heads = num_heads
        self.num_points = num_points
        self.backend = backend
        self.sampled_value_dtype = None
        self.sampling_offsets = nn.Linear(hidden_dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(hidden_dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(hidden_dim, hidden_dim)
        self.output_proj = nn.Linear(hidden_dim, hidden_dim)
        self.reset_parameters()

    def reset_parameters(self):
        """The paper's initialisation: offsets start on a ring of directions, one per
        head, at distance 1..P pixels; attention weights start uniform."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.num_heads, dtype=torch.float64) * (
            2.0 * math.pi / self.num_heads
        )
        directions = torch.stack([angles.cos(), angles.sin()], -1)
        directions = directions / directions.abs().max(-1, keepdim=True).values
        grid = directions.view(self.num_heads, 1, 1, 2).repeat(
            1, self.num_levels, self.num_points, 1
        )
        grid *= torch.arange(1, self.num_points + 1, dtype=torch.float64).view(1, 1, -1, 1)
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
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
        input_padding_mask: torch.Tensor = None,
    ) -> torch.Tensor:
        """
        Args:
            query: (N, Lq, C).
            reference_points: (N, Lq, L, 2) normalized (x, y) points, or
                (N, Lq, L, 4) normalized (cx, cy, w, h) boxes, in which case the
                offsets are relative to the box size.
            input_flatten: (N, S, C), the flattened maps of all levels.
            spatial_shapes: (L, 2) int64 (H, W) of every level.
            level_start_index: (L,) int64 offset of every level in S.
            input_padding_mask: (N, S) bool, True at padding, or None.

        Returns:
            (N, Lq, C).
        """
        N, Lq, _ = query.shape
        _, S, _ = input_flatten.shape
        M, L, P = self.num_heads, self.num_levels, self.num_points
        if spatial_shapes.shape[0] != L:
            raise ValueError(
                f"this module has {L} levels, got spatial shapes of {spatial_shapes.shape[0]}"
            )

        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        projected_dtype = value.dtype
        if self.sampled_value_dtype is not None:
            value = value.to(self.sampled_value_dtype)
        value = value.view(N, S, M, self.hidden_dim // M)
        # Offsets and weights in the reference points' dtype: under bfloat16 autocast
        # these layers compute in bfloat16, and a location, or a level size above 256,
        # is not a bfloat16 number.
        offsets = self.sampling_offsets(query).to(reference_points.dtype).view(N, Lq, M, L, P, 2)
        logits = self.attention_weights(query).to(reference_points.dtype)
        # softmax over each (query, head)'s L * P samples, on a (N * Lq, M, L * P) view.
        # On the 4-D (N, Lq, M, L * P) view Inductor stored the exponentials transposed,
        # Lq innermost, in scalar code; on a 2-D (N * Lq * M, L * P) view with a free
        # image size it read each logit at an index taken modulo the token count, an
        # expression of the image size; both several times slower (docs/benchmarks.md)
        weights = logits.view(N * Lq, M, L * P).softmax(-1).view(N, Lq, M, L, P)

        if reference_points.shape[-1] == 2:
            # offsets are in pixels of each level: (x, y) / (W, H)
            centers = reference_points
            scale = 1.0 / spatial_shapes.flip(-1).to(reference_points.dtype)  # (L, 2)
        elif reference_points.shape[-1] == 4:
            # an offset of 1 is 0.5 / P of the box's width or height
            centers = reference_points[..., :2]
            scale = reference_points[..., 2:] * (0.5 / P)
        else:
            raise ValueError(
                "reference_points must end in 2 (x, y) or 4 (cx, cy, w, h), got shape "
                f"{tuple(reference_points.shape)}"
            )
        output = ms_deform_attn_at_offsets(
            value,
            spatial_shapes,
            level_start_index,
            centers,
            offsets,
            scale,
            weights,
            backend=self.backend,
        ).to(projected_dtype)
        return self.output_proj(output)

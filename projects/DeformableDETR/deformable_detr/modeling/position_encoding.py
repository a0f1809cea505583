"""Sine position encoding of DETR, as Deformable DETR uses it."""

import math

import torch
from torch import nn


def sine_embedding(positions: torch.Tensor, num_feats: int, temperature: float) -> torch.Tensor:
    """(...) positions -> (..., num_feats): sin(p / T_0), cos(p / T_1), sin(p / T_2), ...
    with T_i = temperature ** (2 * (i // 2) / num_feats), in the positions' dtype."""
    dim_t = torch.arange(num_feats, dtype=positions.dtype, device=positions.device)
    dim_t = temperature ** (2 * (dim_t // 2) / num_feats)
    angles = positions[..., None] / dim_t
    return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2)


class PositionEmbeddingSine(nn.Module):
    """Sine/cosine encoding of (y, x) pixel positions counted inside the valid
    (unpadded) region, normalized to (0, scale] per image.

    Args:
        num_pos_feats: channels per axis; the encoding has 2 * num_pos_feats.
        temperature: base of the geometric frequency progression.
        normalize: divide positions by the valid height/width of each image.
        scale: range of normalized positions.
        offset: added to the cumulative position before normalizing (Deformable
            DETR: -0.5, so that pixel centres are encoded).
    """

    def __init__(
        self,
        num_pos_feats: int = 128,
        temperature: float = 10000.0,
        normalize: bool = True,
        scale: float = 2 * math.pi,
        offset: float = -0.5,
        eps: float = 1e-6,
    ):
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale
        self.offset = offset
        self.eps = eps

    def forward(self, mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """mask: (N, H, W) bool, True at padding. Returns (N, 2 * num_pos_feats, H, W),
        computed in `dtype` or float32, whichever is wider (half types lose positions)."""
        dtype = torch.promote_types(dtype, torch.float32)
        not_mask = ~mask
        y_embed = not_mask.cumsum(1, dtype=dtype)
        x_embed = not_mask.cumsum(2, dtype=dtype)
        if self.normalize:
            y_embed = (y_embed + self.offset) / (y_embed[:, -1:, :] + self.eps) * self.scale
            x_embed = (x_embed + self.offset) / (x_embed[:, :, -1:] + self.eps) * self.scale
        pos_x = sine_embedding(x_embed, self.num_pos_feats, self.temperature)
        pos_y = sine_embedding(y_embed, self.num_pos_feats, self.temperature)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)

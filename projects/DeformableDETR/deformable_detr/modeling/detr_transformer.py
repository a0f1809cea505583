"""DETR's transformer (Carion et al., ECCV 2020): standard multi-head attention
over one feature map, post-norm encoder and decoder layers, the position encoding
added to queries and keys of every attention."""

import torch
from torch import nn

from .deformable_transformer import FeedForward, _clones


class DetrEncoderLayer(nn.Module):
    """Self-attention over all positions, then the FFN; post-norm."""

    def __init__(self, hidden_dim: int, num_heads: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(
            hidden_dim, num_heads, dropout=dropout, batch_first=True
        )
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(hidden_dim)
        self.ffn = FeedForward(hidden_dim, dim_feedforward, dropout)

    def forward(self, src, pos, padding_mask):
        """src, pos: (N, S, C); padding_mask: (N, S), True at padding. Returns (N, S, C)."""
        q = k = src + pos
        attended = self.self_attn(q, k, src, key_padding_mask=padding_mask, need_weights=False)[0]
        return self.ffn(self.norm(src + self.dropout(attended)))


class DetrDecoderLayer(nn.Module):
    """Self-attention among queries, cross-attention into the encoder memory, then
    the FFN; post-norm."""

    def __init__(self, hidden_dim: int, num_heads: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(
            hidden_dim, num_heads, dropout=dropout, batch_first=True
        )
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(hidden_dim)
        self.cross_attn = nn.MultiheadAttention(
            hidden_dim, num_heads, dropout=dropout, batch_first=True
        )
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(hidden_dim)
        self.ffn = FeedForward(hidden_dim, dim_feedforward, dropout)

    def forward(self, tgt, query_pos, memory, pos, padding_mask):
        """tgt, query_pos: (N, Q, C); memory, pos: (N, S, C); padding_mask: (N, S)."""
        q = k = tgt + query_pos
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, k, tgt, need_weights=False)[0]))
        attended = self.cross_attn(
            tgt + query_pos, memory + pos, memory, key_padding_mask=padding_mask, need_weights=False
        )[0]
        return self.ffn(self.norm2(tgt + self.dropout2(attended)))


class DetrTransformer(nn.Module):
    """Encoder over the flattened feature map, decoder from zero targets with
    learned query positions; the decoder output of every layer goes through one
    shared LayerNorm (DETR's auxiliary outputs).

    Args:
        hidden_dim, num_heads, dim_feedforward, dropout: of every layer.
        num_encoder_layers, num_decoder_layers: depths.
    """

    def __init__(
        self,
        hidden_dim: int = 256,
        num_heads: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.hidden_dim = hidden_dim
        encoder_layer = DetrEncoderLayer(hidden_dim, num_heads, dim_feedforward, dropout)
        decoder_layer = DetrDecoderLayer(hidden_dim, num_heads, dim_feedforward, dropout)
        self.encoder_layers = _clones(encoder_layer, num_encoder_layers)
        self.decoder_layers = _clones(decoder_layer, num_decoder_layers)
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, src, mask, pos, query_embed):
        """
        Args:
            src, pos: (N, C, H, W) projected features and their position encoding.
            mask: (N, H, W) bool, True at padding.
            query_embed: (Q, C) learned query positions.

        Returns:
            (num_decoder_layers, N, Q, C) normalized decoder outputs of every layer.
        """
        N = src.shape[0]
        src = src.flatten(2).transpose(1, 2)
        pos = pos.flatten(2).transpose(1, 2)
        mask = mask.flatten(1)
        for layer in self.encoder_layers:
            src = layer(src, pos, mask)
        query_pos = query_embed[None].expand(N, -1, -1)
        tgt = torch.zeros_like(query_pos)
        outputs = []
        for layer in self.decoder_layers:
            tgt = layer(tgt, query_pos, src, pos, mask)
            outputs.append(self.decoder_norm(tgt))
        return torch.stack(outputs)

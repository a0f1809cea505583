"""The deformable transformer: encoder, decoder with optional iterative box
refinement, and the two-stage encoder proposals."""

import copy
import math
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from d2ext import MSDeformAttn

from .position_encoding import sine_embedding


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """logit(x), with x clamped to [eps, 1 - eps] first."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def refine_box(delta: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """A box head's output relative to its reference, in logit space: (..., 4)
    delta plus a (..., 4) (cx, cy, w, h) reference box or a (..., 2) (cx, cy)
    reference point (which moves the centre only) -> (..., 4) box logits."""
    reference = inverse_sigmoid(reference)
    if reference.shape[-1] == 4:
        return delta + reference
    return torch.cat([delta[..., :2] + reference, delta[..., 2:]], -1)


def valid_size(mask: torch.Tensor) -> torch.Tensor:
    """mask: (N, H, W), True at padding -> (N, 2) int64 (width, height) of the
    valid region (padding is on the bottom and right)."""
    return torch.stack([(~mask[:, 0, :]).sum(1), (~mask[:, :, 0]).sum(1)], -1)


def sizes_as_tensor(sizes, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(len(sizes),) tensor of sizes read from tensor shapes. They stay symbolic under
    torch.export and torch.jit.trace, where torch.as_tensor would freeze them."""
    return torch.stack([torch.scalar_tensor(size, dtype=dtype, device=device) for size in sizes])


def pixel_centres(H: int, W: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(H * W, 2) (x, y) pixel centres of an H x W map in pixels, row-major."""
    y, x = torch.meshgrid(
        torch.arange(H, dtype=dtype, device=device) + 0.5,
        torch.arange(W, dtype=dtype, device=device) + 0.5,
        indexing="ij",
    )
    return torch.stack((x.reshape(-1), y.reshape(-1)), -1)


def _clones(module: nn.Module, n: int) -> nn.ModuleList:
    return nn.ModuleList([copy.deepcopy(module) for _ in range(n)])


class FeedForward(nn.Module):
    """Post-norm FFN block: x + dropout(linear2(dropout(relu(linear1(x))))), then LayerNorm.

    Args:
        row_blocks: at inference (eval mode), the rows run through the two linear layers
            in this many blocks, which gives the same result: on CPUs whose int8 matrix
            products accumulate the whole product in a scratch buffer (oneDNN without
            VNNI), blocks of a few thousand rows keep it in cache. 1: all rows at once.
    """

    def __init__(self, hidden_dim: int, dim_feedforward: int, dropout: float, row_blocks: int = 1):
        super().__init__()
        if row_blocks < 1:
            raise ValueError(f"row_blocks is a count of row blocks, at least 1; got {row_blocks}")
        self.linear1 = nn.Linear(hidden_dim, dim_feedforward)
        self.dropout1 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, hidden_dim)
        self.dropout2 = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(hidden_dim)
        self.row_blocks = row_blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., hidden_dim), computed as (tokens, hidden_dim) rows."""
        # 2-D rows let Inductor fuse the int8 linear1 with its ReLU and output quantization
        # when the token count is a free size (an exported encoder); on 3-D input it leaves
        # linear1's float32 output for a kernel of its own
        rows = x.reshape(-1, x.shape[-1])
        if self.training or self.row_blocks == 1:
            residual = self._residual(rows)
        else:
            residual = self._residual_in_blocks(rows)
        return self.norm(residual).view(x.shape)

    def _residual(self, rows: torch.Tensor) -> torch.Tensor:
        """rows: (R, hidden_dim). Returns rows + the FFN's output, (R, hidden_dim)."""
        hidden = self.dropout1(F.relu(self.linear1(rows)))
        return rows + self.dropout2(self.linear2(hidden))

    def _residual_in_blocks(self, rows: torch.Tensor) -> torch.Tensor:
        """_residual of rows (R, hidden_dim) in row_blocks blocks of R // row_blocks + 1
        rows, the last one padded with zeros."""
        # Blocks of one size, and the padding dropped by an index, not a slice: slices at
        # multiples of R / row_blocks put guards on R that torch.export cannot prove for a
        # free image size.
        count = rows.shape[0]
        size = count // self.row_blocks + 1
        padded = F.pad(rows, (0, 0, 0, size * self.row_blocks - count))
        blocks = padded.view(self.row_blocks, size, rows.shape[1]).unbind(0)
        residual = torch.cat([self._residual(block) for block in blocks])
        return residual.index_select(0, torch.arange(count, device=rows.device))


class EncoderLayer(nn.Module):
    """Deformable self-attention over all levels, then the FFN; post-norm."""

    def __init__(
        self,
        hidden_dim,
        dim_feedforward,
        dropout,
        num_levels,
        num_heads,
        num_points,
        msda_backend="auto",
        ffn_row_blocks=1,
    ):
        super().__init__()
        self.self_attn = MSDeformAttn(
            hidden_dim, num_levels, num_heads, num_points, backend=msda_backend
        )
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(hidden_dim)
        self.ffn = FeedForward(hidden_dim, dim_feedforward, dropout, ffn_row_blocks)

    def forward(self, src, pos, reference_points, spatial_shapes, level_start_index, padding_mask):
        """src, pos: (N, S, C); reference_points: (N, S, L, 2). Returns (N, S, C)."""
        attended = self.self_attn(
            src + pos, reference_points, src, spatial_shapes, level_start_index, padding_mask
        )
        return self.ffn(self.norm(src + self.dropout(attended)))


class DeformableEncoder(nn.Module):
    def __init__(self, layer: EncoderLayer, num_layers: int):
        super().__init__()
        self.layers = _clones(layer, num_layers)

    @staticmethod
    def reference_points(spatial_shapes: List[tuple], valid_ratios: torch.Tensor) -> torch.Tensor:
        """Pixel centres of every level, normalized by the valid region of each image
        and mapped to every level.

        Args:
            spatial_shapes: L pairs (H, W), taken from tensor shapes (so that they stay
                symbolic under torch.export and tracing).
            valid_ratios: (N, L, 2), the valid (w, h) fraction of every level.

        Returns:
            (N, S, L, 2) normalized (x, y).
        """
        points = []
        for level, (H, W) in enumerate(spatial_shapes):
            centres = pixel_centres(H, W, valid_ratios.dtype, valid_ratios.device)
            valid_wh = torch.stack(
                [valid_ratios[:, level, 0] * W, valid_ratios[:, level, 1] * H], -1
            )
            points.append(centres[None] / valid_wh[:, None])
        return torch.cat(points, 1)[:, :, None] * valid_ratios[:, None]

    def forward(self, src, pos, reference_points, spatial_shapes, level_start_index, padding_mask):
        """src, pos: (N, S, C); reference_points: (N, S, L, 2); padding_mask: (N, S).
        Returns (N, S, C)."""
        for layer in self.layers:
            src = layer(src, pos, reference_points, spatial_shapes, level_start_index, padding_mask)
        return src


class DecoderLayer(nn.Module):
    """Self-attention among queries, deformable cross-attention into the encoder
    memory, then the FFN; post-norm."""

    def __init__(
        self,
        hidden_dim,
        dim_feedforward,
        dropout,
        num_levels,
        num_heads,
        num_points,
        msda_backend="auto",
    ):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(
            hidden_dim, num_heads, dropout=dropout, batch_first=True
        )
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(hidden_dim)
        self.cross_attn = MSDeformAttn(
            hidden_dim, num_levels, num_heads, num_points, backend=msda_backend
        )
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(hidden_dim)
        self.ffn = FeedForward(hidden_dim, dim_feedforward, dropout)

    def forward(
        self,
        tgt,
        query_pos,
        reference_points,
        memory,
        spatial_shapes,
        level_start_index,
        padding_mask,
    ):
        """tgt, query_pos: (N, Q, C); reference_points: (N, Q, L, 2 or 4); memory: (N, S, C)."""
        q = k = tgt + query_pos
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, k, tgt, need_weights=False)[0]))
        attended = self.cross_attn(
            tgt + query_pos,
            reference_points,
            memory,
            spatial_shapes,
            level_start_index,
            padding_mask,
        )
        return self.ffn(self.norm2(tgt + self.dropout2(attended)))


class DeformableDecoder(nn.Module):
    def __init__(self, layer: DecoderLayer, num_layers: int):
        super().__init__()
        self.layers = _clones(layer, num_layers)
        self.num_layers = num_layers

    def forward(
        self,
        tgt,
        reference_points,
        memory,
        spatial_shapes,
        level_start_index,
        valid_ratios,
        query_pos,
        padding_mask,
        bbox_embed: Optional[nn.ModuleList] = None,
    ):
        """
        Args:
            tgt, query_pos: (N, Q, C) query content and position.
            reference_points: (N, Q, 2) normalized points or (N, Q, 4) boxes (cx, cy, w, h).
            memory: (N, S, C) encoder output; valid_ratios: (N, L, 2).
            bbox_embed: one box head per layer for iterative box refinement: each
                layer's prediction, relative to its reference in logit space, becomes
                the next layer's reference (detached).

        Returns:
            hidden states (num_layers, N, Q, C) and the list of reference points each
            layer used, (N, Q, 2) or (N, Q, 4) (refinement turns points into boxes).
        """
        hidden_states, references = [], []
        output = tgt
        for index, layer in enumerate(self.layers):
            scale = (
                torch.cat([valid_ratios, valid_ratios], -1)
                if reference_points.shape[-1] == 4
                else valid_ratios
            )
            reference_input = reference_points[:, :, None] * scale[:, None]
            output = layer(
                output,
                query_pos,
                reference_input,
                memory,
                spatial_shapes,
                level_start_index,
                padding_mask,
            )
            references.append(reference_points)
            if bbox_embed is not None:
                reference_points = (
                    refine_box(bbox_embed[index](output), reference_points).sigmoid().detach()
                )
            hidden_states.append(output)
        return torch.stack(hidden_states), references


class DeformableTransformer(nn.Module):
    """Encoder + decoder of Deformable DETR.

    Args:
        hidden_dim, num_heads, num_encoder_layers, num_decoder_layers, dim_feedforward,
        dropout: the usual transformer sizes.
        num_feature_levels: L.
        enc_num_points, dec_num_points: sampling points per head and level.
        two_stage: decoder queries come from the top-scoring encoder proposals
            instead of learned embeddings.
        two_stage_num_proposals: number of those proposals.
        proposal_base_size: width/height of a level-0 proposal (0.05), doubled per level.
        proposal_temperature: base of the frequencies of the proposals' sine embedding.
        msda_backend: backend of the MSDA op (d2ext.ms_deform_attn).
        encoder_ffn_row_blocks: the encoder FFN's rows run in this many blocks at
            inference (FeedForward's row_blocks; 1: at once). docs/benchmarks.md says
            on which CPUs blocks are faster.
    """

    def __init__(
        self,
        hidden_dim: int = 256,
        num_heads: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        num_feature_levels: int = 4,
        enc_num_points: int = 4,
        dec_num_points: int = 4,
        two_stage: bool = False,
        two_stage_num_proposals: int = 300,
        proposal_base_size: float = 0.05,
        proposal_temperature: float = 10000.0,
        msda_backend: str = "auto",
        encoder_ffn_row_blocks: int = 1,
    ):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.two_stage = two_stage
        self.two_stage_num_proposals = two_stage_num_proposals
        self.proposal_base_size = proposal_base_size
        self.proposal_temperature = proposal_temperature
        self.encoder = DeformableEncoder(
            EncoderLayer(
                hidden_dim,
                dim_feedforward,
                dropout,
                num_feature_levels,
                num_heads,
                enc_num_points,
                msda_backend,
                encoder_ffn_row_blocks,
            ),
            num_encoder_layers,
        )
        self.decoder = DeformableDecoder(
            DecoderLayer(
                hidden_dim,
                dim_feedforward,
                dropout,
                num_feature_levels,
                num_heads,
                dec_num_points,
                msda_backend,
            ),
            num_decoder_layers,
        )
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, hidden_dim))
        if two_stage:
            self.enc_output = nn.Linear(hidden_dim, hidden_dim)
            self.enc_output_norm = nn.LayerNorm(hidden_dim)
            self.pos_trans = nn.Linear(hidden_dim * 2, hidden_dim * 2)
            self.pos_trans_norm = nn.LayerNorm(hidden_dim * 2)
        else:
            self.reference_points = nn.Linear(hidden_dim, 2)
        self.reset_parameters()

    def reset_parameters(self):
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        if not self.two_stage:
            nn.init.zeros_(self.reference_points.bias)
        nn.init.normal_(self.level_embed)

    @staticmethod
    def valid_ratios(mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """mask: (N, H, W) True at padding -> (N, 2) valid (w, h) fraction, in `dtype`
        or float32, whichever is wider."""
        _, H, W = mask.shape
        valid = valid_size(mask).to(torch.promote_types(dtype, torch.float32))
        return torch.stack([valid[:, 0] / W, valid[:, 1] / H], -1)

    def proposal_position_embedding(self, proposals: torch.Tensor) -> torch.Tensor:
        """(N, Q, 4) unnormalized (logit) boxes -> (N, Q, 2 * hidden_dim) sine embedding,
        in the proposals' dtype or float32, whichever is wider."""
        dtype = torch.promote_types(proposals.dtype, torch.float32)
        angles = proposals.to(dtype).sigmoid() * (2 * math.pi)
        return sine_embedding(angles, self.hidden_dim // 2, self.proposal_temperature).flatten(2)

    def encoder_proposals(self, memory, padding_mask, masks: List[torch.Tensor]):
        """One proposal per encoder position: the pixel centre, with width and height
        proposal_base_size * 2^level, in logit space; invalid ones (padding, or too
        close to the border) are +inf and their memory zeroed.

        Args:
            memory: (N, S, C); padding_mask: (N, S), True at padding.
            masks: the same padding per level, L tensors (N, H_l, W_l).

        Returns:
            output_memory (N, S, C) after the proposal projection, proposals (N, S, 4).
        """
        proposals = []
        for level, mask in enumerate(masks):
            N, H, W = mask.shape
            scale = valid_size(mask).view(N, 1, 2).to(memory.dtype)
            centres = pixel_centres(H, W, memory.dtype, memory.device)[None] / scale
            wh = torch.full_like(centres, self.proposal_base_size * (2.0**level))
            proposals.append(torch.cat((centres, wh), -1))
        proposals = torch.cat(proposals, 1)
        valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True)
        proposals = torch.log(proposals / (1 - proposals))
        invalid = padding_mask.unsqueeze(-1) | ~valid
        proposals = proposals.masked_fill(invalid, float("inf"))
        output_memory = memory.masked_fill(invalid, 0.0)
        return self.enc_output_norm(self.enc_output(output_memory)), proposals

    def forward(
        self,
        srcs: List[torch.Tensor],
        masks: List[torch.Tensor],
        pos_embeds: List[torch.Tensor],
        query_embed: Optional[torch.Tensor],
        class_embed: Optional[nn.ModuleList] = None,
        bbox_embed: Optional[nn.ModuleList] = None,
        with_box_refine: bool = False,
    ):
        """
        Args:
            srcs, pos_embeds: L tensors (N, C, H_l, W_l).
            masks: L tensors (N, H_l, W_l), True at padding.
            query_embed: (Q, 2C) learned query position and content, or None in two-stage.
            class_embed, bbox_embed: the detection heads, one per decoder layer plus, in
                two-stage, one for the encoder proposals (the last).
            with_box_refine: iterative box refinement with bbox_embed.
            Two-stage needs both heads (its proposals are scored and moved by the
            last ones), box refinement needs bbox_embed, and without two-stage
            query_embed is required.

        Returns:
            hidden states (num_decoder_layers, N, Q, C), the list of reference points
            of every decoder layer ((N, Q, 2) or (N, Q, 4) each), and in two-stage the
            encoder proposals' logits (N, S, K) and unnormalized boxes (N, S, 4)
            (None otherwise).
        """
        if self.two_stage and (class_embed is None or bbox_embed is None):
            raise ValueError(
                "a two-stage transformer needs class_embed and bbox_embed, to score and move its "
                "proposals"
            )
        if with_box_refine and bbox_embed is None:
            raise ValueError("with_box_refine needs bbox_embed, one box head per decoder layer")
        if not self.two_stage and query_embed is None:
            raise ValueError("query_embed (Q, 2 * hidden_dim) is required without two-stage")
        spatial_shapes_list = [
            tuple(src.shape[-2:]) for src in srcs
        ]  # ints, or symbolic when exported
        src_flatten = torch.cat([src.flatten(2).transpose(1, 2) for src in srcs], 1)
        mask_flatten = torch.cat([mask.flatten(1) for mask in masks], 1)
        pos_flatten = torch.cat(
            [
                pos.flatten(2).transpose(1, 2) + self.level_embed[level]
                for level, pos in enumerate(pos_embeds)
            ],
            1,
        )
        device = src_flatten.device
        spatial_shapes = torch.stack(
            [sizes_as_tensor(hw, torch.long, device) for hw in spatial_shapes_list]
        )
        level_start_index = torch.cat(
            (spatial_shapes.new_zeros((1,)), spatial_shapes.prod(1).cumsum(0)[:-1])
        )
        valid_ratios = torch.stack([self.valid_ratios(m, src_flatten.dtype) for m in masks], 1)

        memory = self.encoder(
            src_flatten,
            pos_flatten,
            self.encoder.reference_points(spatial_shapes_list, valid_ratios),
            spatial_shapes,
            level_start_index,
            mask_flatten,
        )

        N, _, C = memory.shape
        enc_logits = enc_boxes_unact = None
        if self.two_stage:
            output_memory, proposals = self.encoder_proposals(memory, mask_flatten, masks)
            head = self.decoder.num_layers
            enc_logits = class_embed[head](output_memory)
            enc_boxes_unact = bbox_embed[head](output_memory) + proposals
            # small images can have fewer encoder positions than proposals
            num_proposals = min(self.two_stage_num_proposals, enc_logits.shape[1])
            topk = torch.topk(enc_logits[..., 0], num_proposals, dim=1)[1]
            topk_boxes_unact = torch.gather(
                enc_boxes_unact, 1, topk.unsqueeze(-1).expand(-1, -1, 4)
            ).detach()
            reference_points = topk_boxes_unact.sigmoid()
            pos_trans = self.pos_trans_norm(
                self.pos_trans(self.proposal_position_embedding(topk_boxes_unact))
            )
            query_pos, tgt = torch.split(pos_trans, C, dim=2)
        else:
            query_pos, tgt = torch.split(query_embed, C, dim=1)
            query_pos = query_pos.unsqueeze(0).expand(N, -1, -1)
            tgt = tgt.unsqueeze(0).expand(N, -1, -1)
            reference_points = self.reference_points(query_pos).sigmoid()

        hidden_states, references = self.decoder(
            tgt,
            reference_points,
            memory,
            spatial_shapes,
            level_start_index,
            valid_ratios,
            query_pos,
            mask_flatten,
            bbox_embed if with_box_refine else None,
        )
        return hidden_states, references, enc_logits, enc_boxes_unact

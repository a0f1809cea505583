"""d2ext: the multi-scale deformable attention (MSDA) op of Deformable DETR.

ms_deform_attn       the op (backends: cpp, numba, torch)
ms_deform_attn_at_offsets
                     the op at reference points plus offsets, computed inside it
MSDeformAttn         the paper's attention module built on it
available_backends   which backends run here, and why not
"""

from d2ext.backends import BACKENDS, BackendInfo, available_backends
from d2ext.modules import MSDeformAttn
from d2ext.ops import ms_deform_attn, ms_deform_attn_at_offsets

__all__ = [
    "BACKENDS",
    "BackendInfo",
    "MSDeformAttn",
    "available_backends",
    "ms_deform_attn",
    "ms_deform_attn_at_offsets",
]

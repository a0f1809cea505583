"""d2ext: the multi-scale deformable attention (MSDA) op of Deformable DETR.

ms_deform_attn       the op (backends: cpp, numba, torch)
MSDeformAttn         the paper's attention module built on it
available_backends   which backends run here, and why not
"""

from d2ext.backends import BACKENDS, BackendInfo, available_backends
from d2ext.modules import MSDeformAttn
from d2ext.ops import ms_deform_attn

__all__ = ["BACKENDS", "BackendInfo", "MSDeformAttn", "available_backends", "ms_deform_attn"]

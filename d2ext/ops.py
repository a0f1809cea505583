"""The multi-scale deformable attention op: input validation and its
registration with torch.library (op, fake implementation, autograd).

Every backend runs behind the custom op ``d2ext::ms_deform_attn``, so that
``torch.compile(fullgraph=True)`` and ``torch.export`` see one opaque,
shape-propagating node. The op takes the backend by name and resolves "auto"
when it runs, not when it is traced: an exported graph holds "auto" and runs
with whichever backend the machine that runs it has.
"""

import warnings
from typing import Optional

import torch
from torch.utils.weak import WeakTensorKeyDictionary

from d2ext.backends import BACKENDS, resolve_backend
from d2ext.reference import ms_deform_attn_reference, ms_deform_attn_reference_backward

__all__ = ["ms_deform_attn", "ms_deform_attn_at_offsets", "sampling_locations_at_offsets"]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels accumulate in, and in which they take sampling
    locations and attention weights: float32 for half types, else `dtype`."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """Multi-scale deformable attention.

    Args:
        value: (N, S, M, D) floating point; S = sum of H_l * W_l, the levels
            concatenated, each flattened row-major.
        spatial_shapes: (L, 2) integer, (H_l, W_l) of every level.
        level_start_index: (L,) integer, offset of every level in S.
        sampling_locations: (N, Lq, M, L, P, 2) floating point, normalized (x, y):
            (0, 0) is the top-left corner of a map, (1, 1) its bottom-right one.
        attention_weights: (N, Lq, M, L, P) floating point.
        backend: "auto", "cpp", "numba" or "torch" (see d2ext.available_backends()).
            "auto", or $D2EXT_BACKEND when set, picks cpp where it is built for
            the device, else numba on CUDA, else torch; it is resolved when the
            op runs, so compiled and exported graphs keep "auto".

    Returns:
        (N, Lq, M * D) of value's dtype: for every query and head, the sum over
        levels and points of the attention weight times the value bilinearly
        sampled at pixel (x * W_l - 0.5, y * H_l - 0.5), zero outside the map;
        exactly grid_sample(align_corners=False, padding_mode="zeros").

    Sizes: any batch size (there is no im2col_step), empty batches and query
    sets, any channel count, any number of levels and points; inputs need not be
    contiguous.

    Dtypes: value's dtype sets the output's. Sampling locations and attention
    weights are used in float32 when value is float16 or bfloat16 (as autocast
    mixes them: a location rounded to bfloat16 is off by up to a third of a pixel
    on a 167-pixel-wide map), and in value's dtype otherwise; their gradients
    come back in their own dtype. Accumulation is in float32 for half types.

    Non-finite input propagates as through grid_sample: a location that is not
    finite, or a weight that is not finite (inside the map or not), makes that
    sample's term of the output NaN or infinite, and so the gradients of its
    location and weight; NaN or infinite values propagate to the outputs that
    sample them.

    Errors: bad shapes, dtypes or devices raise ValueError naming the argument,
    the expected and the actual shape or dtype. The levels (spatial_shapes
    against level_start_index and S) are checked when the op runs, also inside
    compiled graphs, with one device-to-host copy per spatial_shapes tensor (a
    model passes one tensor to all its layers). The kernels never read outside
    value whatever the metadata: the CPU kernel refuses levels that do not fit
    in it, the CUDA and Numba kernels skip them.

    Determinism: the CPU backward is deterministic. The CUDA and Numba backwards
    add into grad_value atomically: under torch.use_deterministic_algorithms(True)
    they raise an error naming d2ext::ms_deform_attn (a warning in warn-only mode).

    Compile and export: every backend runs behind the custom op
    d2ext::ms_deform_attn (fake implementation, registered autograd, checked
    with torch.library.opcheck), so torch.compile(fullgraph=True) and
    torch.export trace through it, also as the first use in a process. A graph
    exported with backend="auto" runs with the backend of the machine that runs
    it; one exported with a named backend fails there, naming it, if it is missing.

    Examples::

        >>> import torch, d2ext
        >>> spatial_shapes = torch.tensor([[8, 8], [4, 4]])
        >>> level_start_index = torch.tensor([0, 64])
        >>> value = torch.randn(2, 80, 8, 32)  # N=2, S=64+16, M=8 heads, D=32
        >>> locations = torch.rand(2, 100, 8, 2, 4, 2)  # Lq=100, L=2 levels, P=4 points
        >>> weights = torch.rand(2, 100, 8, 2, 4).softmax(-1)
        >>> d2ext.ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights).shape
        torch.Size([2, 100, 256])
    """
    _check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    return _call_op(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights, backend
    )


def ms_deform_attn_at_offsets(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    reference_points: torch.Tensor,
    sampling_offsets: torch.Tensor,
    offset_scale: torch.Tensor,
    attention_weights: torch.Tensor,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """`ms_deform_attn` at the sampling locations

        reference_points[:, :, None, :, None] + sampling_offsets * offset_scale[:, :, None, :, None]

    computed inside the op: the CPU kernel computes each query's locations as it
    samples them, so they are never stored (the other backends compute them first).
    Gradients flow to all three.

    Args:
        value, spatial_shapes, level_start_index, attention_weights, backend: as
            in `ms_deform_attn`.
        reference_points: (N, Lq, L, 2) floating point, normalized (x, y).
        sampling_offsets: (N, Lq, M, L, P, 2) floating point.
        offset_scale: broadcastable to (N, Lq, L, 2): what turns an offset into
            normalized units, e.g. (1 / W_l, 1 / H_l) for offsets in pixels of level l.

    Returns:
        (N, Lq, M * D), as `ms_deform_attn`.
    """
    _check_inputs(
        value,
        spatial_shapes,
        level_start_index,
        sampling_offsets,
        attention_weights,
        locations_name="sampling_offsets",
    )
    N, Lq, _, L, _, _ = sampling_offsets.shape
    frame = (N, Lq, L, 2)
    for name, t in (("reference_points", reference_points), ("offset_scale", offset_scale)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point torch.Tensor, got {_kind(t)}")
        if t.device != value.device:
            raise ValueError(
                f"all tensors must be on one device: value is on {value.device}, {name} on "
                f"{t.device}"
            )
    if tuple(reference_points.shape) != frame:
        raise ValueError(
            f"reference_points must be (N, Lq, L, 2) = {_shape(frame)} for sampling_offsets "
            f"{_shape(sampling_offsets)}, got {_shape(reference_points)}"
        )
    try:
        offset_scale = offset_scale.expand(frame)
    except RuntimeError:
        raise ValueError(
            f"offset_scale must broadcast to (N, Lq, L, 2) = {_shape(frame)}, got "
            f"{_shape(offset_scale)}"
        ) from None
    return _call_op(
        value,
        spatial_shapes,
        level_start_index,
        sampling_offsets,
        attention_weights,
        backend,
        reference_points,
        offset_scale,
    )


def _call_op(value, spatial_shapes, level_start_index, locations, weights, backend, *frame):
    """The custom op on checked inputs, in the dtypes and layout the kernels take."""
    if backend not in BACKENDS + ("auto",):
        raise ValueError(f"backend must be one of {BACKENDS + ('auto',)}, got {backend!r}")
    dtype = compute_dtype(value.dtype)
    return torch.ops.d2ext.ms_deform_attn(
        value.contiguous(),
        spatial_shapes.to(torch.int64).contiguous(),
        level_start_index.to(torch.int64).contiguous(),
        locations.to(dtype).contiguous(),
        weights.to(dtype).contiguous(),
        backend,
        *(t.to(dtype).contiguous() for t in frame),
    )


def sampling_locations_at_offsets(
    reference_points: torch.Tensor, sampling_offsets: torch.Tensor, offset_scale: torch.Tensor
) -> torch.Tensor:
    """(N, Lq, M, L, P, 2) locations from reference points and offsets, as
    `ms_deform_attn_at_offsets` defines them."""
    frame = (slice(None), slice(None), None, slice(None), None)
    return reference_points[frame] + sampling_offsets * offset_scale[frame]


# ---------------------------------------------------------------------------
# Validation


def _shape(t_or_shape) -> str:
    shape = t_or_shape.shape if isinstance(t_or_shape, torch.Tensor) else t_or_shape
    return f"({', '.join(str(s) for s in shape)})"


def _kind(t) -> str:
    return str(t.dtype) if isinstance(t, torch.Tensor) else type(t).__name__


def _check_inputs(
    value,
    spatial_shapes,
    level_start_index,
    sampling_locations,
    attention_weights,
    locations_name="sampling_locations",
):
    named = {
        "value": value,
        "spatial_shapes": spatial_shapes,
        "level_start_index": level_start_index,
        locations_name: sampling_locations,
        "attention_weights": attention_weights,
    }
    for name, t in named.items():
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    for name in ("value", locations_name, "attention_weights"):
        if not named[name].is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {named[name].dtype}")
    for name in ("spatial_shapes", "level_start_index"):
        t = named[name]
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise ValueError(f"{name} must be an integer tensor (int64), got {t.dtype}")
    for name, t in named.items():
        if t.device != value.device:
            raise ValueError(
                f"all tensors must be on one device: value is on {value.device}, {name} on "
                f"{t.device}"
            )

    if value.dim() != 4:
        raise ValueError(f"value must be (N, S, M, D), got shape {_shape(value)}")
    N, S, M, D = value.shape
    if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2:
        raise ValueError(
            f"spatial_shapes must be (L, 2) of (H, W), got shape {_shape(spatial_shapes)}"
        )
    L = spatial_shapes.shape[0]
    if L == 0:
        raise ValueError("spatial_shapes must hold at least one level, got shape (0, 2)")
    if tuple(level_start_index.shape) != (L,):
        raise ValueError(
            f"level_start_index must be (L,) = ({L},) like spatial_shapes, got shape "
            f"{_shape(level_start_index)}"
        )
    if sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2:
        raise ValueError(
            f"{locations_name} must be (N, Lq, M, L, P, 2), got shape {_shape(sampling_locations)}"
        )
    _, Lq, _, _, P, _ = sampling_locations.shape
    expected = (N, Lq, M, L, P, 2)
    if tuple(sampling_locations.shape) != expected:
        raise ValueError(
            f"{locations_name} must be (N, Lq, M, L, P, 2) = {_shape(expected)} for value "
            f"{_shape(value)} and {L} levels, got {_shape(sampling_locations)}"
        )
    if tuple(attention_weights.shape) != expected[:-1]:
        raise ValueError(
            f"attention_weights must be (N, Lq, M, L, P) = {_shape(expected[:-1])}, got "
            f"{_shape(attention_weights)}"
        )


# spatial_shapes already checked, with the level_start_index and S they were
# checked against; a model passes one spatial_shapes tensor to all its layers,
# so the device-to-host copy below happens once per forward pass. Tensors made
# under torch.inference_mode have no version counter to notice in-place changes
# by, so they are checked on every call.
_checked_levels = WeakTensorKeyDictionary()


def _check_levels(spatial_shapes, level_start_index, S):
    cacheable = not (spatial_shapes.is_inference() or level_start_index.is_inference())
    if cacheable:
        key = (spatial_shapes._version, id(level_start_index), level_start_index._version, S)
        if _checked_levels.get(spatial_shapes) == key:
            return
    both = (
        torch.cat([spatial_shapes.reshape(-1), level_start_index.reshape(-1)])
        .to(torch.int64)
        .tolist()
    )
    L = spatial_shapes.shape[0]
    shapes = [(both[2 * i], both[2 * i + 1]) for i in range(L)]
    starts = both[2 * L :]
    if any(h <= 0 or w <= 0 for h, w in shapes):
        raise ValueError(f"spatial_shapes must be positive (H, W) pairs, got {shapes}")
    expected_starts = [0]
    for h, w in shapes[:-1]:
        expected_starts.append(expected_starts[-1] + h * w)
    if starts != expected_starts:
        raise ValueError(
            f"level_start_index must be the offsets of the levels in value, {expected_starts} for "
            f"spatial_shapes {shapes}, got {starts}"
        )
    total = sum(h * w for h, w in shapes)
    if total != S:
        raise ValueError(
            f"value has S = {S} positions but spatial_shapes {shapes} sum to {total} (sum of H * W)"
        )
    if cacheable:
        _checked_levels[spatial_shapes] = key


# ---------------------------------------------------------------------------
# torch.library registration


def _kernels(backend: str):
    """(forward, backward) kernels of the cpp or numba backend."""
    if backend == "cpp":
        return torch.ops.d2ext_C.ms_deform_attn_forward, torch.ops.d2ext_C.ms_deform_attn_backward
    from d2ext import numba_kernels

    return numba_kernels.forward, numba_kernels.backward


@torch.library.custom_op("d2ext::ms_deform_attn", mutates_args=())
def _ms_deform_attn_op(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    backend: str,
    reference_points: Optional[torch.Tensor] = None,
    offset_scale: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """With reference_points and offset_scale, sampling_locations holds the
    offsets (ms_deform_attn_at_offsets)."""
    # Runs eagerly even inside compiled graphs: the levels are checked here.
    _check_levels(spatial_shapes, level_start_index, value.shape[1])
    backend = resolve_backend(backend, value.device, value.dtype)
    if reference_points is not None:
        if backend == "cpp" and value.device.type == "cpu":
            return torch.ops.d2ext_C.ms_deform_attn_forward_at_offsets(
                value,
                spatial_shapes,
                level_start_index,
                reference_points,
                offset_scale,
                sampling_locations,
                attention_weights,
            )
        sampling_locations = sampling_locations_at_offsets(
            reference_points, sampling_locations, offset_scale
        )
    if backend == "torch":
        dtype = sampling_locations.dtype  # compute_dtype(value.dtype)
        output = ms_deform_attn_reference(
            value.to(dtype),
            spatial_shapes,
            level_start_index,
            sampling_locations,
            attention_weights,
        )
        return output.to(value.dtype)
    forward, _ = _kernels(backend)
    return forward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)


@_ms_deform_attn_op.register_fake
def _(
    value,
    spatial_shapes,
    level_start_index,
    sampling_locations,
    attention_weights,
    backend,
    reference_points=None,
    offset_scale=None,
):
    N, _, M, D = value.shape
    return value.new_empty((N, sampling_locations.shape[1], M * D))


@torch.library.custom_op("d2ext::_ms_deform_attn_backward", mutates_args=())
def _ms_deform_attn_backward_op(
    grad_output: torch.Tensor,
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_levels(spatial_shapes, level_start_index, value.shape[1])
    backend = resolve_backend(backend, value.device, value.dtype)
    if backend == "torch":
        dtype = sampling_locations.dtype  # compute_dtype(value.dtype)
        grads = ms_deform_attn_reference_backward(
            grad_output.to(dtype),
            value.to(dtype),
            spatial_shapes,
            level_start_index,
            sampling_locations,
            attention_weights,
        )
        return (grads[0].to(value.dtype),) + grads[1:]
    if backend == "numba" and torch.are_deterministic_algorithms_enabled():
        message = (
            "d2ext::ms_deform_attn backward with the 'numba' backend accumulates grad_value with "
            "atomic adds and has no deterministic implementation, but "
            "torch.use_deterministic_algorithms(True) is set; use backend='cpp' on CPU"
        )
        if not torch.is_deterministic_algorithms_warn_only_enabled():
            raise RuntimeError(message)
        warnings.warn(message)
    _, backward = _kernels(backend)
    return backward(
        grad_output, value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )


@_ms_deform_attn_backward_op.register_fake
def _(
    grad_output,
    value,
    spatial_shapes,
    level_start_index,
    sampling_locations,
    attention_weights,
    backend,
):
    return (
        torch.empty_like(value),
        torch.empty_like(sampling_locations),
        torch.empty_like(attention_weights),
    )


def _setup_context(ctx, inputs, output):
    (
        value,
        spatial_shapes,
        level_start_index,
        sampling_locations,
        attention_weights,
        backend,
        reference_points,
        offset_scale,
    ) = inputs
    ctx.at_offsets = reference_points is not None
    frame = (reference_points, offset_scale) if ctx.at_offsets else ()
    ctx.save_for_backward(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights, *frame
    )
    ctx.backend = backend


def _backward(ctx, grad_output):
    value, spatial_shapes, level_start_index, locations, attention_weights, *frame = (
        ctx.saved_tensors
    )
    if ctx.at_offsets:
        offsets = locations
        reference_points, offset_scale = frame
        locations = sampling_locations_at_offsets(reference_points, offsets, offset_scale)
    grad_value, grad_locations, grad_weights = _ms_deform_attn_backward_op(
        grad_output.contiguous(),
        value,
        spatial_shapes,
        level_start_index,
        locations,
        attention_weights,
        ctx.backend,
    )
    if not ctx.at_offsets:
        return grad_value, None, None, grad_locations, grad_weights, None, None, None
    grad_offsets = grad_locations * offset_scale[:, :, None, :, None]
    grad_reference = grad_locations.sum((2, 4))
    grad_scale = (grad_locations * offsets).sum((2, 4))
    return grad_value, None, None, grad_offsets, grad_weights, None, grad_reference, grad_scale


_ms_deform_attn_op.register_autograd(_backward, setup_context=_setup_context)

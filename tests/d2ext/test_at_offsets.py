"""d2ext.ms_deform_attn_at_offsets: the op at reference points plus scaled offsets,
the locations computed inside it (by the CPU kernel per query, by the other backends
first). Its output and gradients equal the op's at the locations
`sampling_locations_at_offsets` gives; opcheck with the optional inputs; bad input."""

import pytest
import torch

import d2ext
from d2ext.ops import sampling_locations_at_offsets

from .msda_inputs import BACKENDS, TOLERANCE, assert_close_to_scale, level_tensors, requires_cpp

SHAPES = [(9, 11), (5, 6), (3, 3)]


def _inputs(N=2, Lq=5, M=3, D=8, P=4, dtype=torch.float64, device="cpu", boxes=False):
    """(value, spatial_shapes, level_start_index, reference_points, sampling_offsets,
    offset_scale, attention_weights); the offsets reach outside the maps."""
    spatial_shapes, level_start_index, S = level_tensors(SHAPES, device)
    L = len(SHAPES)
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    reference = torch.rand(N, Lq, L, 2, dtype=compute, device=device)
    offsets = torch.randn(N, Lq, M, L, P, 2, dtype=compute, device=device) * 3
    if boxes:
        scale = torch.rand(N, Lq, L, 2, dtype=compute, device=device) * (0.5 / P)
    else:
        scale = 1.0 / spatial_shapes.flip(-1).to(compute)  # (L, 2), broadcast
    value = torch.randn(N, S, M, D, dtype=dtype, device=device)
    weights = torch.rand(N, Lq, M, L, P, dtype=compute, device=device)
    return value, spatial_shapes, level_start_index, reference, offsets, scale, weights


def _at_locations(value, spatial_shapes, level_start_index, reference, offsets, scale, weights):
    locations = sampling_locations_at_offsets(reference, offsets, scale.expand_as(reference))
    return d2ext.ms_deform_attn(
        value, spatial_shapes, level_start_index, locations, weights, backend="torch"
    )


@pytest.mark.parametrize("backend, device", BACKENDS, ids=[b for b, _ in BACKENDS])
@pytest.mark.parametrize("boxes", [False, True], ids=["pixels", "boxes"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_output_and_gradients_equal_the_op_at_the_locations(backend, device, boxes, dtype):
    if backend == "numba" and dtype == torch.bfloat16:
        pytest.skip("the numba backend takes float32 and float64")
    inputs = _inputs(dtype=dtype, device=device, boxes=boxes)
    leaves = [t.clone().requires_grad_(t.is_floating_point()) for t in inputs]
    expected_leaves = [t.clone().requires_grad_(t.is_floating_point()) for t in inputs]
    output = d2ext.ms_deform_attn_at_offsets(*leaves, backend=backend)
    expected = _at_locations(*expected_leaves)
    assert output.dtype == dtype
    tol = 1e-2 if dtype == torch.bfloat16 else TOLERANCE[dtype]
    assert_close_to_scale(output.float(), expected.float(), tol, msg=lambda m: f"output: {m}")
    grad_output = torch.randn_like(output)
    differentiable = [t for t in leaves if t.requires_grad]
    grads = torch.autograd.grad(output, differentiable, grad_output)
    expected_grads = torch.autograd.grad(
        expected, [t for t in expected_leaves if t.requires_grad], grad_output
    )
    names = ("value", "reference_points", "sampling_offsets", "offset_scale", "weights")
    for name, grad, expected_grad in zip(names, grads, expected_grads):
        assert grad.shape == expected_grad.shape, name
        assert_close_to_scale(
            grad.float(), expected_grad.float(), tol, msg=lambda m: f"grad of {name}: {m}"
        )


@requires_cpp
def test_cpp_kernel_places_the_samples_as_the_locations_do():
    """The CPU kernel's own arithmetic (reference + offset * scale per query) against
    the kernel fed the stored locations: the same samples, to float32 rounding."""
    value, shapes, starts, reference, offsets, _, weights = _inputs(dtype=torch.float32, P=5)
    scale = torch.rand(*reference.shape) * 0.05  # a scale per query and level
    fused = torch.ops.d2ext_C.ms_deform_attn_forward_at_offsets(
        value, shapes, starts, reference, scale, offsets, weights
    )
    locations = sampling_locations_at_offsets(reference, offsets, scale)
    stored = torch.ops.d2ext_C.ms_deform_attn_forward(value, shapes, starts, locations, weights)
    torch.testing.assert_close(fused, stored, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", [pytest.param("cpp", marks=requires_cpp), "torch"])
def test_gradcheck_float64(backend):
    value, shapes, starts, reference, offsets, _, weights = _inputs(N=1, Lq=2, M=2, D=3, P=2)
    scale = torch.rand(*reference.shape, dtype=torch.float64) * 0.1

    def op(value, reference, offsets, scale, weights):
        return d2ext.ms_deform_attn_at_offsets(
            value, shapes, starts, reference, offsets, scale, weights, backend=backend
        )

    leaves = [t.requires_grad_() for t in (value, reference, offsets, scale, weights)]
    assert torch.autograd.gradcheck(op, leaves)


@pytest.mark.parametrize("backend, device", BACKENDS, ids=[b for b, _ in BACKENDS])
@pytest.mark.parametrize("requires_grad", [True, False], ids=["grad", "no_grad"])
def test_opcheck_with_reference_points(backend, device, requires_grad):
    value, shapes, starts, reference, offsets, scale, weights = _inputs(
        N=2, Lq=3, M=2, D=4, P=2, device=device
    )
    scale = scale.expand_as(reference).contiguous()
    args = [value, shapes, starts, offsets, weights, backend, reference, scale]
    args = [
        t.requires_grad_(requires_grad)
        if isinstance(t, torch.Tensor) and t.is_floating_point()
        else t
        for t in args
    ]
    torch.library.opcheck(torch.ops.d2ext.ms_deform_attn.default, tuple(args))


def _with(index, tensor):
    inputs = list(_inputs(dtype=torch.float32))
    inputs[index] = tensor
    return inputs


BAD_INPUTS = {
    "reference_points without levels": (
        _with(3, torch.rand(2, 5, 2)),
        r"reference_points must be \(N, Lq, L, 2\) = \(2, 5, 3, 2\)",
    ),
    "reference_points of another query count": (
        _with(3, torch.rand(2, 4, 3, 2)),
        r"reference_points must be \(N, Lq, L, 2\)",
    ),
    "integer reference_points": (
        _with(3, torch.ones(2, 5, 3, 2, dtype=torch.int64)),
        "reference_points must be a floating-point torch.Tensor, got torch.int64",
    ),
    "offset_scale of another level count": (
        _with(5, torch.ones(2, 2)),
        r"offset_scale must broadcast to \(N, Lq, L, 2\) = \(2, 5, 3, 2\), got \(2, 2\)",
    ),
    "offset_scale not a tensor": (
        _with(5, 0.5),
        "offset_scale must be a floating-point torch.Tensor, got float",
    ),
    "offsets without the pair": (
        _with(4, torch.randn(2, 5, 3, 3, 4)),
        r"sampling_offsets must be \(N, Lq, M, L, P, 2\)",
    ),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_raises_value_error(name):
    inputs, match = BAD_INPUTS[name]
    with pytest.raises(ValueError, match=match):
        d2ext.ms_deform_attn_at_offsets(*inputs)


@requires_cpp
def test_kernel_entry_point_checks_the_reference_points():
    value, shapes, starts, reference, offsets, scale, weights = _inputs(dtype=torch.float32)
    scale = scale.expand_as(reference).contiguous()
    with pytest.raises(RuntimeError, match=r"reference_points and offset_scale must be"):
        torch.ops.d2ext_C.ms_deform_attn_forward_at_offsets(
            value, shapes, starts, reference[:, :, :2].contiguous(), scale, offsets, weights
        )
    with pytest.raises(RuntimeError, match=r"of sampling_offsets' dtype"):
        torch.ops.d2ext_C.ms_deform_attn_forward_at_offsets(
            value, shapes, starts, reference.double(), scale, offsets, weights
        )

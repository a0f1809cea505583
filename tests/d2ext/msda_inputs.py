"""Random inputs of the MSDA op, the parity check against the reference, and the
backends that run here, shared by the backends' tests."""

import numba
import pytest
import torch

import d2ext
from d2ext.reference import ms_deform_attn_reference

TOLERANCE = {torch.float64: 1e-10, torch.float32: 2e-5}

CPP = d2ext.available_backends()["cpp"].available
NUMBA_DEVICE = "cpu" if numba.config.ENABLE_CUDASIM else "cuda"
NUMBA = d2ext.available_backends()["numba"].available
requires_cpp = pytest.mark.skipif(not CPP, reason="d2ext._C is not built")

# (backend, device) of every backend that runs here
BACKENDS = (
    [("torch", "cpu")]
    + ([("cpp", "cpu")] if CPP else [])
    + ([("numba", NUMBA_DEVICE)] if NUMBA else [])
)


def assert_close_to_scale(actual, expected, tol, msg):
    """assert_close with an absolute tolerance of tol times the largest |expected|
    (at least tol): an element that sums many terms of both signs, such as the
    location gradient, carries the rounding error of its largest terms, which
    its own small value says nothing of."""
    atol = tol * max(1.0, expected.abs().max().item())
    torch.testing.assert_close(actual, expected, rtol=tol, atol=atol, msg=msg)


def level_tensors(shapes, device="cpu"):
    """(spatial_shapes (L, 2), level_start_index (L,), S) for a list of (H, W)."""
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64, device=device).view(-1, 2)
    areas = spatial_shapes.prod(1)
    level_start_index = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    return spatial_shapes, level_start_index, int(areas.sum())


def _map_size(shapes):
    """(L, 1, 2) float64 (W, H) of every level, in the (x, y) order of locations."""
    return torch.tensor(shapes, dtype=torch.float64).flip(1)[:, None, :]


def random_locations(N, Lq, M, shapes, P):
    """(N, Lq, M, L, P, 2) float64 locations from [-0.2, 1.2], so some fall outside
    the maps, with some coordinates exactly on the borders 0 and 1."""
    size = _map_size(shapes)
    locations = torch.empty(N, Lq, M, len(shapes), P, 2, dtype=torch.float64).uniform_(-0.2, 1.2)
    # Off integer pixel coordinates, where the location gradient jumps: a
    # backend and grid_sample could round to different sides.
    pixel = locations * size - 0.5
    locations = torch.where(
        (pixel - pixel.round()).abs() < 1e-3, locations + 0.25 / size, locations
    )
    flat = locations.view(-1, 2)
    flat[0::5, 0] = 0.0
    flat[1::5, 1] = 0.0
    flat[2::5, 0] = 1.0
    flat[3::5, 1] = 1.0
    flat[4::11] = 1.0
    return locations


def lattice_locations(N, Lq, M, shapes, P):
    """(N, Lq, M, L, P, 2) float64 locations on the half-pixel lattice (exactly
    representable, so every backend rounds alike): pixel coordinates -1.5, -1
    (outside, yet the neighbour 0 gives a gradient), integers and half integers
    inside, size - 1, size and size + 0.5. Sample 0 of query 0, head 0 is at pixel
    (-1, 0.5) and sample 1 at (0.5, -1) on every level."""
    size = _map_size(shapes)
    k = torch.randint(-2, int(2 * size.max()) + 3, (N, Lq, M, len(shapes), P, 2)).to(torch.float64)
    locations = torch.minimum(k, 2 * size + 2) / (2 * size)  # pixel k / 2 - 0.5
    locations[0, 0, 0, :, 0] = torch.stack([-0.5 / size[:, 0, 0], 1 / size[:, 0, 1]], 1)
    locations[0, 0, 0, :, 1] = torch.stack([1 / size[:, 0, 0], -0.5 / size[:, 0, 1]], 1)
    return locations


def make_inputs(N, Lq, M, D, shapes, P, dtype=torch.float64, device="cpu", locations=None):
    """Fresh random (value, spatial_shapes, level_start_index, sampling_locations,
    attention_weights); locations from `random_locations` unless given."""
    spatial_shapes, level_start_index, S = level_tensors(shapes, device)
    if locations is None:
        locations = random_locations(N, Lq, M, shapes, P)
    value = torch.randn(N, S, M, D, dtype=dtype, device=device)
    weights = torch.rand(N, Lq, M, len(shapes), P, dtype=dtype, device=device)
    return (
        value,
        spatial_shapes,
        level_start_index,
        locations.to(dtype=dtype, device=device),
        weights,
    )


def reference_with_grads(inputs, grad_output):
    """The reference output and its gradients for grad_output w.r.t. value,
    sampling_locations and attention_weights."""
    value, spatial_shapes, level_start_index, locations, weights = [
        t.detach().requires_grad_(t.is_floating_point()) for t in inputs
    ]
    output = ms_deform_attn_reference(value, spatial_shapes, level_start_index, locations, weights)
    grads = torch.autograd.grad(output, (value, locations, weights), grad_output)
    return output.detach(), grads


def assert_backend_matches_reference(backend, inputs):
    """Forward and backward of d2ext.ms_deform_attn(backend=...) equal the
    reference's on `inputs`; returns the backend's gradients."""
    dtype = inputs[0].dtype
    tol = TOLERANCE[dtype]
    value, spatial_shapes, level_start_index, locations, weights = [
        t.clone().requires_grad_(t.is_floating_point()) for t in inputs
    ]
    output = d2ext.ms_deform_attn(
        value, spatial_shapes, level_start_index, locations, weights, backend=backend
    )
    grad_output = torch.randn_like(output)
    expected, expected_grads = reference_with_grads(inputs, grad_output)
    assert_close_to_scale(output, expected, tol, msg=lambda m: f"{backend} output: {m}")
    grads = torch.autograd.grad(output, (value, locations, weights), grad_output)
    for name, grad, expected_grad in zip(
        ("value", "sampling_locations", "attention_weights"), grads, expected_grads
    ):
        assert_close_to_scale(
            grad, expected_grad, tol, msg=lambda m: f"{backend} grad of {name}: {m}"
        )
    return grads


def assert_lattice_parity(backend, device):
    """assert_backend_matches_reference on lattice_locations; the samples at pixel
    -1 (outside) still get the gradient of their inside neighbour, as in grid_sample."""
    shapes = [(4, 2), (2, 8)]
    locations = lattice_locations(1, 3, 2, shapes, 8)
    inputs = make_inputs(1, 3, 2, 3, shapes, 8, device=device, locations=locations)
    grad_locations = assert_backend_matches_reference(backend, inputs)[1][0, 0, 0]
    assert (grad_locations[:, 0, 0] != 0).all(), (
        "pixel x = -1 is outside, but its neighbour x = 0 gives a gradient"
    )
    assert (grad_locations[:, 1, 1] != 0).all(), (
        "pixel y = -1 is outside, but its neighbour y = 0 gives a gradient"
    )

"""Random inputs of the MSDA op for the tests."""
import torch


def level_tensors(shapes, device="cpu"):
    """(spatial_shapes (L, 2), level_start_index (L,), S) for a list of (H, W)."""
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64, device=device).view(-1, 2)
    areas = spatial_shapes.prod(1)
    level_start_index = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    return spatial_shapes, level_start_index, int(areas.sum())


def make_inputs(N, Lq, M, D, shapes, P, dtype=torch.float64, device="cpu", border_fraction=0.1):
    """Fresh random (value, spatial_shapes, level_start_index, sampling_locations,
    attention_weights). Locations are drawn from [-0.2, 1.2] so some fall outside
    the maps; a fraction of coordinates sits exactly on the borders 0 and 1."""
    spatial_shapes, level_start_index, S = level_tensors(shapes, device)
    L = len(shapes)
    value = torch.randn(N, S, M, D, dtype=dtype, device=device)
    locations = torch.rand(N, Lq, M, L, P, 2, dtype=dtype, device=device) * 1.4 - 0.2
    on_border = torch.rand(locations.shape, device=device) < border_fraction
    border = (torch.rand(locations.shape, device=device) < 0.5).to(dtype)
    locations = torch.where(on_border, border, locations)
    weights = torch.rand(N, Lq, M, L, P, dtype=dtype, device=device)
    return value, spatial_shapes, level_start_index, locations, weights


def reference_with_grads(inputs, grad_output=None):
    """The reference output and, given grad_output, its gradients w.r.t. value,
    sampling_locations and attention_weights."""
    from d2ext.reference import ms_deform_attn_reference

    value, spatial_shapes, level_start_index, locations, weights = [
        t.detach().requires_grad_(t.is_floating_point()) for t in inputs
    ]
    output = ms_deform_attn_reference(value, spatial_shapes, level_start_index, locations, weights)
    if grad_output is None:
        return output.detach(), None
    grads = torch.autograd.grad(output, (value, locations, weights), grad_output)
    return output.detach(), grads

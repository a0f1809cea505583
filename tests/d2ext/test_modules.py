"""d2ext.MSDeformAttn: the paper's initialisation, both kinds of reference
points, padding masks, and agreement between backends."""

import pytest
import torch

import d2ext

from .msda_inputs import level_tensors


def _inputs(N=2, Lq=6, C=32, shapes=((6, 5), (3, 3)), box=False):
    spatial_shapes, level_start_index, S = level_tensors(list(shapes))
    L = len(shapes)
    reference = torch.rand(N, Lq, L, 4 if box else 2)
    return torch.randn(N, Lq, C), reference, torch.randn(N, S, C), spatial_shapes, level_start_index


def test_initial_offsets_point_around_the_reference_and_weights_are_uniform():
    attn = d2ext.MSDeformAttn(hidden_dim=32, num_levels=2, num_heads=4, num_points=3)
    offsets = attn.sampling_offsets.bias.view(4, 2, 3, 2)
    # head 0 looks right (+x), head 1 down (+y) at 90 degrees, points at 1, 2, 3 pixels
    torch.testing.assert_close(offsets[0, 1], torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]]))
    torch.testing.assert_close(offsets[1, 0, :, 1], torch.tensor([1.0, 2.0, 3.0]))
    assert offsets[1, 0, :, 0].abs().max() < 1e-6
    query = torch.randn(1, 5, 32)
    logits = attn.attention_weights(query)
    assert torch.all(logits == 0), "uniform attention at initialisation"
    assert torch.all(attn.sampling_offsets.weight == 0)


@pytest.mark.parametrize("box", [False, True], ids=["points", "boxes"])
def test_backends_agree(box):
    if not d2ext.available_backends()["cpp"].available:
        pytest.skip("d2ext._C is not built")
    attn = d2ext.MSDeformAttn(hidden_dim=32, num_levels=2, num_heads=4, num_points=3).double()
    torch.nn.init.normal_(attn.sampling_offsets.weight, std=0.1)
    inputs = [t.double() if t.is_floating_point() else t for t in _inputs(box=box)]
    outputs = []
    for backend in ("cpp", "torch"):
        attn.backend = backend
        outputs.append(attn(*inputs))
    assert outputs[0].shape == (2, 6, 32)
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-10, atol=1e-10)


def test_padding_is_ignored():
    attn = d2ext.MSDeformAttn(hidden_dim=32, num_levels=2, num_heads=4, num_points=3)
    query, reference, features, spatial_shapes, level_start_index = _inputs()
    mask = torch.zeros(features.shape[:2], dtype=torch.bool)
    mask[:, -4:] = True
    noisy = features.clone()
    noisy[:, -4:] = 1e3
    a = attn(query, reference, features, spatial_shapes, level_start_index, mask)
    b = attn(query, reference, noisy, spatial_shapes, level_start_index, mask)
    torch.testing.assert_close(a, b)


def test_bad_configuration_and_reference_points():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        d2ext.MSDeformAttn(hidden_dim=30, num_heads=4)
    attn = d2ext.MSDeformAttn(hidden_dim=32, num_levels=2, num_heads=4, num_points=3)
    query, reference, features, spatial_shapes, level_start_index = _inputs()
    with pytest.raises(ValueError, match="must end in 2"):
        attn(query, reference[..., :1], features, spatial_shapes, level_start_index)
    with pytest.raises(ValueError, match="this module has 2 levels"):
        attn(query, reference, features, spatial_shapes[:1], level_start_index[:1])


@pytest.mark.parametrize("box", [False, True], ids=["points", "boxes"])
def test_bf16_autocast_places_samples_in_float32(monkeypatch, box):
    """Under bfloat16 autocast the offset and weight layers compute in bfloat16, and
    the locations and weights that reach the op are float32, from exact level sizes
    (257 is not a bfloat16 number: it rounds to 256)."""
    attn = d2ext.MSDeformAttn(hidden_dim=32, num_levels=2, num_heads=4, num_points=3)
    torch.nn.init.normal_(attn.sampling_offsets.weight, std=0.1)
    query, reference, value, spatial_shapes, starts = _inputs(shapes=((2, 257), (1, 3)), box=box)
    seen = {}

    def record(value, spatial_shapes, starts, centers, offsets, scale, weights, backend):
        seen.update(centers=centers, offsets=offsets, scale=scale, weights=weights)
        return value.new_zeros(value.shape[0], offsets.shape[1], 32)

    monkeypatch.setattr(d2ext.modules, "ms_deform_attn_at_offsets", record)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        attn(query, reference, value, spatial_shapes, starts)
        offsets = attn.sampling_offsets(query).float().view(2, 6, 4, 2, 3, 2)
        logits = attn.attention_weights(query).float()
    for name in ("centers", "offsets", "scale", "weights"):
        assert seen[name].dtype == torch.float32, name
    torch.testing.assert_close(seen["offsets"], offsets, rtol=0, atol=0)
    if box:
        torch.testing.assert_close(seen["centers"], reference[..., :2], rtol=0, atol=0)
        torch.testing.assert_close(seen["scale"], reference[..., 2:] * (0.5 / 3), rtol=0, atol=0)
        expected = (
            reference[:, :, None, :, None, :2]
            + offsets / 3 * reference[:, :, None, :, None, 2:] * 0.5
        )
    else:
        torch.testing.assert_close(seen["centers"], reference, rtol=0, atol=0)
        # 1 / 257 from the exact size, not from 256
        torch.testing.assert_close(
            seen["scale"], 1.0 / torch.tensor([[257.0, 2.0], [3.0, 1.0]]), rtol=0, atol=0
        )
        sizes = spatial_shapes.flip(-1).float()[:, None]  # (L, 1, 2): (W, H)
        expected = reference[:, :, None, :, None] + offsets / sizes
    locations = d2ext.ops.sampling_locations_at_offsets(
        seen["centers"], seen["offsets"], seen["scale"].expand_as(seen["centers"])
    )
    torch.testing.assert_close(locations, expected, rtol=1e-6, atol=1e-6)
    weights = logits.view(2, 6, 4, 6).softmax(-1).view(2, 6, 4, 2, 3)
    torch.testing.assert_close(seen["weights"], weights, rtol=0, atol=0)


def test_sampled_value_dtype_samples_bfloat16_values_into_a_float32_output(monkeypatch):
    attn = d2ext.MSDeformAttn(hidden_dim=32, num_levels=2, num_heads=4, num_points=3)
    torch.nn.init.normal_(attn.sampling_offsets.weight, std=0.1)
    inputs = _inputs()
    expected = attn(*inputs)
    attn.sampled_value_dtype = torch.bfloat16
    seen = {}
    op = d2ext.modules.ms_deform_attn_at_offsets

    def record(value, *args, **kwargs):
        seen["value"] = value.dtype
        return op(value, *args, **kwargs)

    monkeypatch.setattr(d2ext.modules, "ms_deform_attn_at_offsets", record)
    output = attn(*inputs)
    assert seen["value"] == torch.bfloat16
    assert output.dtype == torch.float32
    torch.testing.assert_close(output, expected, rtol=0.02, atol=0.02)
    assert not torch.equal(output, expected)

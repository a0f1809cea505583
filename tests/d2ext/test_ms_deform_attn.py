"""The MSDA op: parity of the compiled backend with the reference, gradients,
dtypes, empty and odd shapes, determinism, bad input (torch.compile and
torch.export: test_op_contract.py, in fresh processes)."""

import pytest
import torch

import d2ext
from d2ext.reference import ms_deform_attn_reference

from .msda_inputs import (
    CPP,
    assert_backend_matches_reference,
    assert_lattice_parity,
    level_tensors,
    make_inputs,
    reference_with_grads,
    requires_cpp,
)

CPP_CUDA = CPP and "cuda" in d2ext.available_backends()["cpp"].devices and torch.cuda.is_available()

DEVICES = ["cpu"] + (["cuda"] if CPP_CUDA else [])

# (N, Lq, M, D, level shapes, P): odd channel counts, 1 to 5 levels, 1 to 8 points
CASES = [
    (2, 5, 2, 1, [(6, 7)], 1),
    (1, 9, 3, 3, [(5, 4), (3, 2)], 4),
    (3, 4, 2, 30, [(8, 5), (4, 3), (2, 2)], 2),
    (2, 7, 8, 32, [(9, 11), (5, 6), (3, 3), (2, 2)], 4),
    (1, 6, 1, 64, [(4, 4), (2, 2)], 8),
    (2, 3, 2, 71, [(3, 5), (2, 3), (1, 2), (1, 1)], 3),
    (1, 2, 1, 1025, [(3, 3), (2, 1)], 2),
    (2, 4, 2, 4, [(7, 3), (5, 2), (3, 3), (2, 5), (1, 1)], 5),
]


@requires_cpp
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "case", CASES, ids=lambda c: f"N{c[0]}Lq{c[1]}M{c[2]}D{c[3]}L{len(c[4])}P{c[5]}"
)
def test_cpp_matches_reference(case, dtype, device):
    assert_backend_matches_reference("cpp", make_inputs(*case, dtype=dtype, device=device))


@requires_cpp
@pytest.mark.parametrize("device", DEVICES)
def test_cpp_on_the_pixel_lattice(device):
    assert_lattice_parity("cpp", device)


@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_gradcheck_float64(backend):
    if backend == "cpp" and not CPP:
        pytest.skip("d2ext._C is not built")
    value, spatial_shapes, level_start_index, locations, weights = make_inputs(
        2, 3, 2, 3, [(4, 3), (2, 3)], 2, dtype=torch.float64
    )

    def op(value, locations, weights):
        return d2ext.ms_deform_attn(
            value, spatial_shapes, level_start_index, locations, weights, backend=backend
        )

    inputs = tuple(t.requires_grad_() for t in (value, locations, weights))
    assert torch.autograd.gradcheck(op, inputs, eps=1e-6, atol=1e-6)


@requires_cpp
@pytest.mark.parametrize("shape", [(0, 4), (2, 0)], ids=["N0", "Lq0"])
def test_empty_batch_or_queries(shape):
    N, Lq = shape
    value, spatial_shapes, level_start_index, locations, weights = [
        t.requires_grad_(t.is_floating_point()) for t in make_inputs(N, Lq, 2, 5, [(3, 3)], 2)
    ]
    for backend in ("cpp", "torch"):
        output = d2ext.ms_deform_attn(
            value, spatial_shapes, level_start_index, locations, weights, backend=backend
        )
        assert output.shape == (N, Lq, 10)
        grads = torch.autograd.grad(output.sum(), (value, locations, weights), allow_unused=True)
        assert grads[0] is None or (grads[0] == 0).all()


@requires_cpp
def test_zero_points_give_zeros():
    value, spatial_shapes, level_start_index, locations, weights = [
        t.requires_grad_(t.is_floating_point())
        for t in make_inputs(2, 3, 2, 4, [(3, 3), (2, 2)], 0)
    ]
    for backend in ("cpp", "torch"):
        output = d2ext.ms_deform_attn(
            value, spatial_shapes, level_start_index, locations, weights, backend=backend
        )
        assert output.shape == (2, 3, 8) and not output.any()
        grad_value, grad_locations, grad_weights = torch.autograd.grad(
            output.sum(), (value, locations, weights)
        )
        assert grad_value.shape == value.shape and not grad_value.any()
        assert grad_locations.shape == (2, 3, 2, 2, 0, 2) and grad_weights.shape == (2, 3, 2, 2, 0)


@requires_cpp
def test_non_contiguous_inputs():
    value, spatial_shapes, level_start_index, locations, weights = make_inputs(
        2, 5, 3, 4, [(4, 5), (2, 3)], 3
    )
    # same values, other memory layouts
    value_t = value.transpose(0, 2).contiguous().transpose(0, 2)
    locations_t = locations.transpose(0, 1).contiguous().transpose(0, 1)
    weights_t = weights.transpose(1, 3).contiguous().transpose(1, 3)
    assert not (value_t.is_contiguous() or locations_t.is_contiguous() or weights_t.is_contiguous())
    output = d2ext.ms_deform_attn(
        value_t, spatial_shapes, level_start_index, locations_t, weights_t, backend="cpp"
    )
    expected = ms_deform_attn_reference(
        value, spatial_shapes, level_start_index, locations, weights
    )
    torch.testing.assert_close(output, expected, rtol=1e-10, atol=1e-10)


@requires_cpp
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_types_accumulate_in_float32(dtype, device):
    inputs = make_inputs(2, 6, 2, 32, [(6, 5), (3, 3)], 4, dtype=torch.float32, device=device)
    value, spatial_shapes, level_start_index, locations, weights = [t.clone() for t in inputs]
    value = value.to(dtype).requires_grad_()
    locations.requires_grad_()
    weights.requires_grad_()
    output = d2ext.ms_deform_attn(
        value, spatial_shapes, level_start_index, locations, weights, backend="cpp"
    )
    assert output.dtype == dtype
    grad_output = torch.randn(output.shape, device=device).to(dtype)
    grads = torch.autograd.grad(output, (value, locations, weights), grad_output)
    assert [g.dtype for g in grads] == [dtype, torch.float32, torch.float32]

    # the reference on the same (rounded) values, in float32
    exact_inputs = (value.detach().float(),) + inputs[1:3] + (locations.detach(), weights.detach())
    expected, expected_grads = reference_with_grads(exact_inputs, grad_output.float())
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(output.float(), expected, rtol=2 * eps, atol=4 * eps)
    torch.testing.assert_close(grads[0].float(), expected_grads[0], rtol=2 * eps, atol=4 * eps)
    for grad, expected_grad in zip(grads[1:], expected_grads[1:]):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-4)


# The benchmark's decoder case at CPU scale, and channel counts that take the
# blocks of 16, 8, 4, 2 and 1 channels after those of 32
BFLOAT16_CASES = [
    (2, 300, 8, 32, [(25, 42), (13, 21), (7, 11), (4, 6)], 4),
    (2, 3, 2, 71, [(3, 5), (2, 3), (1, 2), (1, 1)], 3),
    (2, 4, 2, 30, [(8, 5), (4, 3), (2, 2)], 2),
    (2, 5, 2, 1, [(6, 7)], 1),
]


@requires_cpp
@pytest.mark.parametrize(
    "case", BFLOAT16_CASES, ids=lambda c: f"N{c[0]}Lq{c[1]}M{c[2]}D{c[3]}L{len(c[4])}P{c[5]}"
)
def test_cpu_bfloat16_output_is_the_float32_output_rounded(case):
    """bfloat16 values accumulate in float32 as float32 values do, and each output is
    rounded once: the same bits as the float32 op's output rounded by torch."""
    value, spatial_shapes, level_start_index, locations, weights = make_inputs(
        *case, dtype=torch.float32
    )
    value = value.bfloat16()
    output = d2ext.ms_deform_attn(
        value, spatial_shapes, level_start_index, locations, weights, backend="cpp"
    )
    expected = d2ext.ms_deform_attn(
        value.float(), spatial_shapes, level_start_index, locations, weights, backend="cpp"
    )
    assert output.dtype == torch.bfloat16
    assert torch.equal(output.view(torch.int16), expected.bfloat16().view(torch.int16))


@requires_cpp
def test_cpu_bfloat16_output_rounds_halfway_to_even():
    """Outputs halfway between two bfloat16 values go to the one with the even last
    bit, as torch rounds (not down, not up), and NaN stays NaN: each query samples
    the centre of pixel 0, whose channels are 1, -1, 2, NaN, ..., with attention
    weight 1 + 2**-8 or 1 + 3 * 2**-8. The 37 channels take the blocks of 32, 4
    and 1."""
    D = 37
    spatial_shapes, level_start_index, S = level_tensors([(1, 4)])
    pattern = torch.tensor([1.0, -1.0, 2.0, float("nan")])
    value = torch.zeros(1, S, 1, D, dtype=torch.bfloat16)
    value[0, 0, 0] = pattern.repeat(10)[:D].bfloat16()
    locations = torch.tensor([0.5 / 4, 0.5]).expand(1, 2, 1, 1, 1, 2).contiguous()
    weights = torch.tensor([1 + 2**-8, 1 + 3 * 2**-8]).view(1, 2, 1, 1, 1)
    output = d2ext.ms_deform_attn(
        value, spatial_shapes, level_start_index, locations, weights, backend="cpp"
    )
    nan = float("nan")
    expected = torch.tensor(
        [[1.0, -1.0, 2.0, nan], [1 + 2**-6, -(1 + 2**-6), 2 + 2**-5, nan]]
    ).repeat(1, 10)[:, :D]
    torch.testing.assert_close(output[0].float(), expected, rtol=0, atol=0, equal_nan=True)
    exact = weights.view(2, 1) * value[0, 0, 0].float()
    torch.testing.assert_close(output[0], exact.bfloat16(), rtol=0, atol=0, equal_nan=True)


@requires_cpp
def test_mixed_dtypes_follow_value():
    inputs = make_inputs(1, 4, 2, 3, [(3, 4)], 2, dtype=torch.float32)
    value, spatial_shapes, level_start_index, locations, weights = inputs
    locations = locations.double().requires_grad_()
    weights = weights.half().requires_grad_()
    output = d2ext.ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights)
    assert output.dtype == torch.float32
    grad_locations, grad_weights = torch.autograd.grad(output.sum(), (locations, weights))
    assert grad_locations.dtype == torch.float64 and grad_weights.dtype == torch.float16
    expected = ms_deform_attn_reference(
        value, spatial_shapes, level_start_index, locations.float(), weights.float()
    )
    torch.testing.assert_close(output, expected)


@requires_cpp
def test_int32_levels_are_accepted():
    value, spatial_shapes, level_start_index, locations, weights = make_inputs(
        1, 3, 1, 2, [(2, 3), (1, 2)], 1
    )
    output = d2ext.ms_deform_attn(
        value, spatial_shapes.int(), level_start_index.int(), locations, weights, backend="cpp"
    )
    expected = ms_deform_attn_reference(
        value, spatial_shapes, level_start_index, locations, weights
    )
    torch.testing.assert_close(output, expected)


@requires_cpp
def test_cpu_backward_is_deterministic():
    inputs = make_inputs(2, 50, 2, 8, [(3, 3)], 4, dtype=torch.float32)
    value, spatial_shapes, level_start_index, locations, weights = inputs
    value.requires_grad_()
    grads = []
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        for _ in range(2):
            output = d2ext.ms_deform_attn(
                value, spatial_shapes, level_start_index, locations, weights, backend="cpp"
            )
            grads.append(torch.autograd.grad(output.sum(), value)[0])
    finally:
        torch.use_deterministic_algorithms(previous)
    assert torch.equal(grads[0], grads[1])


@requires_cpp
def test_cpu_gradients_do_not_depend_on_how_heads_are_split():
    """The CPU backward splits the N * M heads among threads and sets up a thread's
    samples of a query in vectors from its first head on: with L * P = 6 samples a
    head, 3 and 4 threads start mid-vector (heads 4 and 3 of 5), and must give the
    gradients of one thread bit for bit, out-of-map and non-finite locations included."""
    value, spatial_shapes, level_start_index, locations, weights = make_inputs(
        2, 37, 5, 7, [(4, 5), (2, 3)], 3, dtype=torch.float32
    )
    flat = locations.view(-1, 2)
    flat[1, 0] = float("nan")
    flat[4] = 3.0
    flat[8, 1] = -float("inf")
    grads = []
    previous = torch.get_num_threads()
    try:
        for threads in (1, 3, 4):
            torch.set_num_threads(threads)
            leaves = [t.detach().requires_grad_() for t in (value, locations, weights)]
            output = d2ext.ms_deform_attn(
                leaves[0], spatial_shapes, level_start_index, leaves[1], leaves[2], backend="cpp"
            )
            grads.append(torch.autograd.grad(output.sum(), leaves))
    finally:
        torch.set_num_threads(previous)
    assert grads[0][1].isnan().any(), "a NaN location must give a NaN location gradient"
    for split in grads[1:]:
        for one_thread, threads in zip(grads[0], split):
            torch.testing.assert_close(threads, one_thread, rtol=0, atol=0, equal_nan=True)


def test_auto_backend_and_env_override(monkeypatch):
    inputs = make_inputs(1, 3, 1, 2, [(2, 2)], 1)
    expected = ms_deform_attn_reference(*inputs)
    monkeypatch.setenv("D2EXT_BACKEND", "torch")
    torch.testing.assert_close(d2ext.ms_deform_attn(*inputs), expected)
    monkeypatch.setenv("D2EXT_BACKEND", "bogus")
    with pytest.raises(ValueError, match="D2EXT_BACKEND"):
        d2ext.ms_deform_attn(*inputs)
    monkeypatch.delenv("D2EXT_BACKEND")
    torch.testing.assert_close(d2ext.ms_deform_attn(*inputs), expected)


def test_available_backends_explains_itself():
    backends = d2ext.available_backends()
    assert set(backends) == {"cpp", "numba", "torch"}
    assert backends["torch"].available
    for info in backends.values():
        assert info.detail, "every backend says what it runs on or why it does not"
        assert info.available == bool(info.devices)


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="backend must be one of"):
        d2ext.ms_deform_attn(*make_inputs(1, 2, 1, 2, [(2, 2)], 1), backend="cuda")


# ---------------------------------------------------------------------------
# Bad input


def _good():
    return list(make_inputs(2, 3, 2, 4, [(3, 4), (2, 2)], 2, dtype=torch.float32))


def _with(index, tensor):
    args = _good()
    args[index] = tensor(args) if callable(tensor) else tensor
    return args


BAD_INPUTS = {
    "value rank": (_with(0, lambda a: a[0].flatten(2)), r"value must be \(N, S, M, D\)"),
    "value integer": (_with(0, lambda a: a[0].long()), "value must be a floating-point tensor"),
    "locations integer": (
        _with(3, lambda a: a[3].long()),
        "sampling_locations must be a floating-point",
    ),
    "weights integer": (
        _with(4, lambda a: a[4].int()),
        "attention_weights must be a floating-point",
    ),
    "shapes float": (_with(1, lambda a: a[1].float()), "spatial_shapes must be an integer tensor"),
    "starts float": (
        _with(2, lambda a: a[2].double()),
        "level_start_index must be an integer tensor",
    ),
    "shapes rank": (_with(1, lambda a: a[1].flatten()), r"spatial_shapes must be \(L, 2\)"),
    "starts length": (_with(2, lambda a: a[2][:1]), r"level_start_index must be \(L,\)"),
    "locations last dim": (
        _with(3, lambda a: a[3][..., :1]),
        r"sampling_locations must be \(N, Lq, M, L, P, 2\)",
    ),
    "locations batch": (
        _with(3, lambda a: a[3][:1]),
        r"sampling_locations must be .* got \(1, 3, 2, 2, 2, 2\)",
    ),
    "locations levels": (_with(3, lambda a: a[3][:, :, :, :1]), r"for value .* and 2 levels"),
    "weights shape": (
        _with(4, lambda a: a[4][..., :1]),
        r"attention_weights must be \(N, Lq, M, L, P\)",
    ),
    "starts wrong": (
        _with(2, lambda a: torch.tensor([0, 11])),
        r"level_start_index must be the offsets .*\[0, 12\]",
    ),
    "S mismatch": (
        _with(0, lambda a: a[0][:, :-1]),
        "value has S = 15 positions but spatial_shapes",
    ),
    "non-positive shape": (
        _with(1, lambda a: torch.tensor([[3, 4], [0, 2]])),
        "spatial_shapes must be positive",
    ),
    "not a tensor": (_with(1, [[3, 4], [2, 2]]), "spatial_shapes must be a torch.Tensor"),
    "device": (_with(2, lambda a: a[2].to("meta")), "all tensors must be on one device"),
}


@pytest.mark.parametrize("backend", ["torch", "auto"])
@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_raises_value_error(name, backend):
    args, message = BAD_INPUTS[name]
    with pytest.raises(ValueError, match=message):
        d2ext.ms_deform_attn(*args, backend=backend)


def test_changed_levels_are_checked_again():
    value, spatial_shapes, level_start_index, locations, weights = _good()
    d2ext.ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights)
    level_start_index[1] = 5  # in place: the cached check must not hide it
    with pytest.raises(ValueError, match="level_start_index must be the offsets"):
        d2ext.ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights)


def test_inference_mode_is_checked_on_every_call():
    with torch.inference_mode():
        value, spatial_shapes, level_start_index, locations, weights = _good()
        output = d2ext.ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights)
        torch.testing.assert_close(
            output,
            ms_deform_attn_reference(value, spatial_shapes, level_start_index, locations, weights),
        )
        level_start_index[1] = 5  # no version counter here: must still be caught
        with pytest.raises(ValueError, match="level_start_index must be the offsets"):
            d2ext.ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights)


def test_docstring_example_runs():
    """The Examples block of d2ext.ms_deform_attn's docstring, which the README points to."""
    import doctest

    finder = doctest.DocTestFinder(recurse=False)
    (test,) = finder.find(d2ext.ms_deform_attn, "ms_deform_attn", globs={})
    assert test.examples, "the docstring has no Examples block"
    result = doctest.DocTestRunner().run(test)
    assert result.failed == 0 and result.attempted == len(test.examples)

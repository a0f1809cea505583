"""The op's contract where it is easiest to break: first use under torch.compile
and torch.export in a fresh process, the level check inside compiled graphs,
the size checks of the compiled kernels' own entry points, memory safety under
any metadata, non-finite input, torch.library.opcheck, and exported graphs that
run where other backends are available."""

import subprocess
import sys
import textwrap

import pytest
import torch

import d2ext
from d2ext.reference import ms_deform_attn_reference

from .msda_inputs import (
    BACKENDS,
    level_tensors,
    make_inputs,
    reference_with_grads,
    requires_cpp,
)


def run_python(code: str, env: dict | None = None) -> str:
    """Runs `code` in a fresh interpreter; returns its stdout, fails with its stderr."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, (
        f"exit {result.returncode}\n{result.stdout}\n{result.stderr[-5000:]}"
    )
    return result.stdout


# ---------------------------------------------------------------------------
# 1. torch.compile and torch.export as the first use in a fresh process

_ATTENTION = """
    import torch, d2ext
    torch.manual_seed(0)
    attn = d2ext.MSDeformAttn(hidden_dim=16, num_levels=2, num_heads=2, num_points=2)
    spatial_shapes = torch.tensor([[4, 5], [2, 3]])
    level_start_index = torch.tensor([0, 20])
    inputs = (
        torch.randn(2, 7, 16),
        torch.rand(2, 7, 2, 2),
        torch.randn(2, 26, 16),
        spatial_shapes,
        level_start_index,
    )
"""


@pytest.mark.slow
@requires_cpp
def test_compile_fullgraph_as_first_use():
    run_python(
        _ATTENTION
        + """
    compiled = torch.compile(attn, fullgraph=True, backend="aot_eager")
    output = compiled(*inputs)  # the first call of the op in this process
    grads = torch.autograd.grad(output.sum(), list(attn.parameters()))
    expected = attn(*inputs)
    expected_grads = torch.autograd.grad(expected.sum(), list(attn.parameters()))
    torch.testing.assert_close(output, expected)
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad)
    """
    )


@pytest.mark.slow
@requires_cpp
@pytest.mark.parametrize("strict", [False, True], ids=["non_strict", "strict"])
def test_export_as_first_use(strict):
    run_python(
        _ATTENTION
        + f"""
    strict = {strict}"""
        + """
    exported = torch.export.export(attn.eval(), inputs, strict=strict)  # the op's first call here
    targets = {str(node.target) for node in exported.graph.nodes if node.op == "call_function"}
    assert "d2ext.ms_deform_attn.default" in targets, targets
    torch.testing.assert_close(exported.module()(*inputs), attn(*inputs))
    """
    )


# ---------------------------------------------------------------------------
# 2. The level check holds inside compiled graphs


@pytest.mark.slow
@pytest.mark.parametrize("backend", [b for b, _ in BACKENDS])
def test_compiled_call_checks_the_levels(backend):
    value = torch.randn(1, 12, 1, 2)  # S = 12 = 3 * 4
    locations = torch.rand(1, 5, 1, 1, 2, 2)
    weights = torch.rand(1, 5, 1, 1, 2)
    device = dict(BACKENDS)[backend]
    value, locations, weights = value.to(device), locations.to(device), weights.to(device)

    def op(value, spatial_shapes, level_start_index):
        return d2ext.ms_deform_attn(
            value, spatial_shapes, level_start_index, locations, weights, backend=backend
        )

    compiled = torch.compile(op, fullgraph=True, backend="aot_eager")
    good = torch.tensor([[3, 4]], device=device), torch.tensor([0], device=device)
    torch.testing.assert_close(compiled(value, *good), op(value, *good))
    bad_start = torch.tensor([[3, 4]], device=device), torch.tensor([6], device=device)
    with pytest.raises(ValueError, match="level_start_index must be the offsets"):
        compiled(value, *bad_start)
    bad_shape = torch.tensor([[4, 4]], device=device), torch.tensor([0], device=device)
    with pytest.raises(ValueError, match="value has S = 12 positions"):
        compiled(value, *bad_shape)


# ---------------------------------------------------------------------------
# 3. The compiled kernels' own entry points check sizes


def _kernel_inputs():
    return list(make_inputs(2, 3, 2, 4, [(3, 4), (2, 2)], 2, dtype=torch.float32))


def _replaced(index, make):
    args = _kernel_inputs()
    args[index] = make(args)
    return args


KERNEL_SIZE_MISMATCHES = {
    "locations M": (
        _replaced(3, lambda a: a[3][:, :, :1].contiguous()),
        "sampling_locations must be",
    ),
    "locations N": (_replaced(3, lambda a: a[3][:1].contiguous()), "sampling_locations must be"),
    "locations L": (
        _replaced(3, lambda a: a[3][:, :, :, :1].contiguous()),
        "sampling_locations must be",
    ),
    "locations last dim": (
        _replaced(3, lambda a: a[3][..., :1].contiguous()),
        "sampling_locations must be",
    ),
    "weights": (_replaced(4, lambda a: a[4][..., :1].contiguous()), "attention_weights must be"),
    "spatial_shapes": (
        _replaced(1, lambda a: torch.tensor([[3, 4, 1], [2, 2, 1]])),
        "spatial_shapes must be",
    ),
    "level_start_index": (_replaced(2, lambda a: torch.tensor([0])), "level_start_index must be"),
    "level past S": (_replaced(2, lambda a: torch.tensor([0, 13])), "does not lie within"),
    "level too large": (
        _replaced(1, lambda a: torch.tensor([[3, 4], [3, 3]])),
        "does not lie within",
    ),
    "negative start": (_replaced(2, lambda a: torch.tensor([-4, 12])), "does not lie within"),
}


@requires_cpp
@pytest.mark.parametrize("name", list(KERNEL_SIZE_MISMATCHES))
def test_kernel_entry_points_check_sizes(name):
    args, message = KERNEL_SIZE_MISMATCHES[name]
    with pytest.raises(RuntimeError, match=message):
        torch.ops.d2ext_C.ms_deform_attn_forward(*args)
    grad_output = torch.zeros(2, 3, 8)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.d2ext_C.ms_deform_attn_backward(grad_output, *args)


@requires_cpp
@pytest.mark.parametrize(
    "shape", [(2, 3, 4), (1, 3, 8), (2, 4, 8), (2, 3)], ids=["MD", "N", "Lq", "rank"]
)
def test_kernel_backward_checks_grad_output(shape):
    with pytest.raises(RuntimeError, match=r"grad_output must be \(N, Lq, M \* D\) = \(2, 3, 8\)"):
        torch.ops.d2ext_C.ms_deform_attn_backward(torch.zeros(shape), *_kernel_inputs())


@requires_cpp
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_kernel_backward_checks_grad_output_device():
    args = [t.cuda() for t in _kernel_inputs()]
    with pytest.raises(RuntimeError, match="grad_output must be on value's device"):
        torch.ops.d2ext_C.ms_deform_attn_backward(torch.zeros(2, 3, 8), *args)


# ---------------------------------------------------------------------------
# 5. No metadata makes a kernel touch memory outside value


def test_levels_changed_behind_the_cache_never_crash():
    """spatial_shapes changed in place through .numpy() (no version bump, so the
    cached check still passes) after a first call: the cpp kernel refuses it,
    the numba kernel skips the level; neither reads outside value. Run in a
    fresh process, so that a crash fails this test instead of the suite."""
    out = run_python(
        """
    import numba, torch, d2ext
    backends = [b for b in ("cpp", "numba") if d2ext.available_backends()[b].available]
    device = {"cpp": "cpu", "numba": "cpu" if numba.config.ENABLE_CUDASIM else "cuda"}
    for backend in backends:
        spatial_shapes = torch.tensor([[3, 4]])
        level_start_index = torch.tensor([0])
        value = torch.randn(1, 12, 1, 2)
        locations = torch.rand(1, 50, 1, 1, 4, 2)
        weights = torch.rand(1, 50, 1, 1, 4)
        args = [
            t.to(device[backend])
            for t in (value, spatial_shapes, level_start_index, locations, weights)
        ]
        d2ext.ms_deform_attn(*args, backend=backend)
        for shapes, start in (
            ((3000, 4000), 0),
            ((3, 4), 1 << 40),
            ((3, 4), -(1 << 40)),
            ((-3, 4), 0),
        ):
            if device[backend] == "cpu":  # neither way bumps the version counter
                args[1].numpy()[0] = shapes
                args[2].numpy()[0] = start
            else:
                args[1].data.copy_(torch.tensor([shapes]))
                args[2].data.copy_(torch.tensor([start]))
            try:
                output = d2ext.ms_deform_attn(*args, backend=backend)
                assert backend == "numba", "the cpp kernel checks the levels on the host"
                assert not output.any(), "a level outside value contributes nothing"
                print(backend, "skipped")
            except RuntimeError as e:
                assert backend == "cpp" and "does not lie within" in str(e), e
                print(backend, "refused")
    """
    )
    expected = [
        f"{b} {'refused' if b == 'cpp' else 'skipped'}"
        for b in ("cpp", "numba")
        if d2ext.available_backends()[b].available
    ]
    assert [line for line in out.splitlines() if line] == [e for e in expected for _ in range(4)]


# ---------------------------------------------------------------------------
# 4. Non-finite input propagates as in the reference


def _non_finite_inputs(device):
    """Inputs with inf/NaN attention weights on points inside and outside the
    maps, non-finite and huge locations, and non-finite values."""
    torch.manual_seed(0)
    shapes = [(4, 5), (2, 3)]
    value, spatial_shapes, level_start_index, locations, weights = make_inputs(
        2, 6, 2, 3, shapes, 3, dtype=torch.float64
    )
    inf, nan = float("inf"), float("nan")
    locations[0, 0, 0, 0, 0] = torch.tensor([1.7, 0.5])  # outside the map...
    weights[0, 0, 0, 0, 0] = inf  # ...with an infinite weight
    locations[0, 1, 1, 1, 1] = torch.tensor([-0.9, 2.0])
    weights[0, 1, 1, 1, 1] = nan
    weights[1, 2, 0, 0, 2] = inf  # inside the map
    weights[1, 3, 1, 1, 0] = -inf
    locations[1, 0, 0, 0, 1, 0] = nan
    locations[1, 1, 1, 1, 2, 1] = inf
    locations[0, 4, 0, 1, 0, 0] = -inf
    locations[0, 5, 1, 0, 1] = torch.tensor([1e30, 0.5])  # finite, far outside: zero
    locations[1, 5, 0, 0, 0] = torch.tensor([0.5, nan])
    weights[1, 5, 0, 0, 0] = 0.0  # zero times NaN is NaN
    value[0, 7, 1, 2] = inf
    value[1, 21, 0, 0] = nan
    return [t.to(device) for t in (value, spatial_shapes, level_start_index, locations, weights)]


def _assert_same_non_finite(actual, expected, what):
    """Non-finite in the same elements (NaN and inf may differ there: a sum of
    infinite terms can come out either way), and close elsewhere."""
    assert torch.equal(actual.isfinite(), expected.isfinite()), (
        f"{what}: non-finite elements differ"
    )
    finite = expected.isfinite()
    torch.testing.assert_close(actual[finite], expected[finite], rtol=1e-10, atol=1e-10, msg=what)


# the simulator computes in numpy, which warns about what it propagates
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("backend, device", BACKENDS, ids=[b for b, _ in BACKENDS])
def test_non_finite_input_propagates_like_grid_sample(backend, device):
    inputs = _non_finite_inputs(device)
    value, spatial_shapes, level_start_index, locations, weights = [
        t.clone().requires_grad_(t.is_floating_point()) for t in inputs
    ]
    output = d2ext.ms_deform_attn(
        value, spatial_shapes, level_start_index, locations, weights, backend=backend
    )
    grad_output = torch.randn_like(output)
    grads = torch.autograd.grad(output, (value, locations, weights), grad_output)
    expected, expected_grads = reference_with_grads([t.cpu() for t in inputs], grad_output.cpu())
    assert not expected.isfinite().all() and not expected_grads[2].isfinite().all()
    _assert_same_non_finite(output.cpu(), expected, f"{backend} output")
    for name, grad, expected_grad in zip(("value", "weights"), grads[::2], expected_grads[::2]):
        _assert_same_non_finite(grad.cpu(), expected_grad, f"{backend} grad of {name}")
    # grid_sample leaves one coordinate's gradient finite for some non-finite
    # locations; the op makes the whole location's gradient non-finite
    grad_locations = grads[1].cpu()
    expected_non_finite = ~expected_grads[1].isfinite().all(-1)
    assert torch.equal(~grad_locations.isfinite().all(-1), expected_non_finite), (
        f"{backend} grad of locations"
    )
    torch.testing.assert_close(
        grad_locations[~expected_non_finite], expected_grads[1][~expected_non_finite]
    )


# ---------------------------------------------------------------------------
# 6. torch.library.opcheck, and exported graphs on machines with other backends


def _opcheck_inputs(device, requires_grad):
    value, spatial_shapes, level_start_index, locations, weights = make_inputs(
        2, 3, 2, 4, [(3, 4), (2, 2)], 2, dtype=torch.float64, device=device
    )
    return tuple(
        t.requires_grad_(requires_grad and t.is_floating_point())
        for t in (value, spatial_shapes, level_start_index, locations, weights)
    )


@pytest.mark.parametrize("backend, device", BACKENDS, ids=[b for b, _ in BACKENDS])
@pytest.mark.parametrize("requires_grad", [True, False], ids=["grad", "no_grad"])
def test_opcheck(backend, device, requires_grad):
    args = _opcheck_inputs(device, requires_grad) + (backend,)
    torch.library.opcheck(torch.ops.d2ext.ms_deform_attn.default, args)


@pytest.mark.parametrize("backend, device", BACKENDS, ids=[b for b, _ in BACKENDS])
def test_opcheck_backward(backend, device):
    value, *rest = _opcheck_inputs(device, False)
    grad_output = torch.randn(2, 3, 8, dtype=torch.float64, device=device)
    torch.library.opcheck(
        torch.ops.d2ext._ms_deform_attn_backward.default, (grad_output, value, *rest, backend)
    )


def test_backward_op_is_private():
    assert hasattr(torch.ops.d2ext, "_ms_deform_attn_backward")
    assert not hasattr(torch.ops.d2ext, "ms_deform_attn_backward")


_WITHOUT_CPP = """
    import sys
    sys.modules["d2ext._C"] = None  # as on a machine where it is not built
"""


@pytest.mark.slow
@requires_cpp
@pytest.mark.parametrize("backend", ["auto", "cpp"])
def test_exported_program_on_a_machine_without_the_backend(backend, tmp_path):
    """An exported graph holds the backend name it was called with: "auto" runs
    with what the loading machine has; a named backend it lacks fails naming it."""
    spatial_shapes, level_start_index, S = level_tensors([(4, 5), (2, 3)])
    _, _, _, locations, weights = make_inputs(1, 4, 2, 3, [(4, 5), (2, 3)], 2, dtype=torch.float32)
    value = torch.randn(1, S, 2, 3)

    class Attention(torch.nn.Module):
        def forward(self, value, locations, weights):
            return d2ext.ms_deform_attn(
                value, spatial_shapes, level_start_index, locations, weights, backend=backend
            )

    path = tmp_path / "attention.pt2"
    torch.export.save(torch.export.export(Attention(), (value, locations, weights)), path)
    expected = ms_deform_attn_reference(
        value, spatial_shapes, level_start_index, locations, weights
    )
    torch.save(((value, locations, weights), expected), tmp_path / "io.pt")
    out = run_python(
        _WITHOUT_CPP
        + f"""
    import torch, d2ext
    assert not d2ext.available_backends()["cpp"].available
    program = torch.export.load({str(path)!r})
    inputs, expected = torch.load({str(tmp_path / "io.pt")!r})
    try:
        torch.testing.assert_close(program.module()(*inputs), expected)
        print("ran")
    except RuntimeError as e:
        print(e)
    """
    )
    if backend == "auto":
        assert out.strip() == "ran"
    else:
        assert "the 'cpp' backend is unavailable" in out and "d2ext._C is not built" in out, out

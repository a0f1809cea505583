"""The CPU kernels' instruction sets: the AVX-512 build runs where the CPU has
AVX-512F/BW/DQ/VL, else the AVX2 + FMA build where it has both, else the generic
build; D2EXT_CPU_CAPABILITY=avx2 or default caps the choice. Every set the CPU
runs matches the reference and the generic set, and passes the op's tests (in
fresh processes: the choice is made once per process)."""

import os
import platform
import subprocess
import sys

import pytest
import torch

import d2ext

from .msda_inputs import (
    TOLERANCE,
    assert_close_to_scale,
    make_inputs,
    reference_with_grads,
    requires_cpp,
)

pytestmark = requires_cpp

ENV_VAR = "D2EXT_CPU_CAPABILITY"

# Best first: name -> (what it needs, in words; /proc/cpuinfo flags it needs)
KERNEL_SETS = {
    "avx512": ("AVX-512F/BW/DQ/VL", {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx2", "fma"}),
    "avx2": ("AVX2 and FMA", {"avx2", "fma"}),
    "default": ("nothing", set()),
}

# (N, Lq, M, D, level shapes, P): the benchmark's encoder (Lq = S) and decoder
# cases at CPU scale, then channel counts that are not a multiple of 16 (blocks of
# 16, 8, 4, 2, 1 after the blocks of 32) and odd sizes.
_LEVELS = [(25, 42), (13, 21), (7, 11), (4, 6)]
PARITY_CASES = {
    "encoder": (2, sum(h * w for h, w in _LEVELS), 8, 32, _LEVELS, 4),
    "decoder": (2, 300, 8, 32, _LEVELS, 4),
    "D71": (1, 7, 3, 71, [(5, 4), (3, 2)], 3),
    "D30": (2, 5, 2, 30, [(8, 5), (4, 3), (2, 2)], 2),
    "D1": (2, 5, 2, 1, [(6, 7)], 1),
    "D17_M5_L5": (1, 9, 5, 17, [(7, 3), (5, 2), (3, 3), (2, 5), (1, 1)], 5),
}

# Runs the op's forward and backward on saved inputs, in a fresh process.
_RUN_OP = """
import sys, torch, d2ext
from d2ext import _C
results = []
for inputs, grad_output in torch.load(sys.argv[1]):
    value, shapes, starts, locations, weights = [
        t.clone().requires_grad_(t.is_floating_point()) for t in inputs
    ]
    output = d2ext.ms_deform_attn(value, shapes, starts, locations, weights, backend="cpp")
    grads = torch.autograd.grad(output, (value, locations, weights), grad_output)
    results.append((output.detach(),) + grads)
torch.save({"capability": _C.cpu_capability(), "results": results}, sys.argv[2])
"""


def _run(args, capability: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python *args` in a fresh process with D2EXT_CPU_CAPABILITY=capability."""
    env = {**os.environ, ENV_VAR: capability}
    return subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith("flags")]
    except OSError:
        return None
    return set(lines[0].split(":", 1)[1].split()) if lines else None


def _missing(capability: str):
    """None if the CPU runs the kernel set, else why not (a skip reason)."""
    needs, flags_needed = KERNEL_SETS[capability]
    if not flags_needed:
        return None
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"needs {needs}: not an x86-64 CPU"
    flags = _cpu_flags()
    if flags is None:
        return f"needs {needs}: the CPU's flags are not readable here"
    lacking = sorted(flags_needed - flags)
    return f"needs {needs}: the CPU lacks {', '.join(lacking)}" if lacking else None


def _skip_unless_cpu_runs(capability: str):
    reason = _missing(capability)
    if reason is not None:
        pytest.skip(reason)


@pytest.mark.skipif(ENV_VAR in os.environ, reason=f"{ENV_VAR} is set")
def test_the_best_instruction_set_is_chosen():
    from d2ext import _C

    if _cpu_flags() is None:
        pytest.skip("the CPU's flags are not readable here")
    expected = next(name for name in KERNEL_SETS if _missing(name) is None)
    assert _C.cpu_capability() == expected
    assert f"CPU kernels ({expected})" in d2ext.available_backends()["cpp"].detail


@pytest.fixture(scope="module")
def kernel_results(tmp_path_factory):
    """capability -> (inputs, grad_output, the op's (output, grads)) per case and dtype,
    each set run in its own fresh process on the same inputs."""
    torch.manual_seed(0)
    cases = []
    for case in PARITY_CASES.values():
        for dtype in (torch.float64, torch.float32):
            inputs = make_inputs(*case, dtype=dtype)
            N, Lq, M, D = case[:4]
            cases.append((inputs, torch.randn(N, Lq, M * D, dtype=dtype)))
    folder = tmp_path_factory.mktemp("cpu_kernels")
    torch.save(cases, folder / "inputs.pt")
    results = {}
    for capability in KERNEL_SETS:
        if _missing(capability) is not None:
            continue
        out = folder / f"{capability}.pt"
        run = _run(["-c", _RUN_OP, str(folder / "inputs.pt"), str(out)], capability, 600)
        assert run.returncode == 0, run.stderr[-3000:]
        saved = torch.load(out)
        assert saved["capability"] == capability
        results[capability] = saved["results"]
    return cases, results


def _case_ids():
    return [f"{name}-{dtype}" for name in PARITY_CASES for dtype in ("float64", "float32")]


@pytest.mark.slow
@pytest.mark.parametrize("capability", list(KERNEL_SETS))
def test_each_kernel_set_matches_the_reference_and_the_generic_set(capability, kernel_results):
    _skip_unless_cpu_runs(capability)
    cases, results = kernel_results
    names = ("output", "grad value", "grad sampling_locations", "grad attention_weights")
    for case_id, (inputs, grad_output), actual, generic in zip(
        _case_ids(), cases, results[capability], results["default"]
    ):
        tol = TOLERANCE[inputs[0].dtype]
        expected, expected_grads = reference_with_grads(inputs, grad_output)
        for name, a, e, g in zip(names, actual, (expected,) + expected_grads, generic):
            assert_close_to_scale(
                a, e, tol, msg=lambda m: f"{capability} {case_id} {name} vs reference: {m}"
            )
            assert_close_to_scale(
                a, g, tol, msg=lambda m: f"{capability} {case_id} {name} vs default: {m}"
            )


@pytest.mark.slow
@pytest.mark.parametrize("capability", ["avx2", "default"])
def test_a_capped_set_is_chosen_and_passes_the_op_tests(capability):
    """The sets below the best one run only when forced; the best one runs the op's
    tests in the main process."""
    _skip_unless_cpu_runs(capability)
    check = _run(["-c", "from d2ext import _C; print(_C.cpu_capability())"], capability)
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip() == capability
    tests = os.path.join(os.path.dirname(__file__), "test_ms_deform_attn.py")
    result = _run(["-m", "pytest", "-q", "-p", "no:cacheprovider", tests], capability, 600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout


def test_a_set_the_cpu_lacks_falls_back_with_a_warning():
    lacking = [name for name in KERNEL_SETS if _missing(name) is not None]
    if not lacking:
        pytest.skip("the CPU runs every kernel set")
    result = _run(["-c", "from d2ext import _C; print(_C.cpu_capability())"], lacking[0])
    assert result.returncode == 0, result.stderr
    best = next(name for name in KERNEL_SETS if _missing(name) is None)
    assert result.stdout.strip() == best
    assert f"lacks {KERNEL_SETS[lacking[0]][0]}" in result.stderr


def test_an_unknown_instruction_set_is_a_clear_error():
    result = _run(["-c", "from d2ext import _C; _C.cpu_capability()"], "sse9")
    assert result.returncode != 0
    assert 'D2EXT_CPU_CAPABILITY must be one of "avx512", "avx2", "default", got "sse9"' in (
        result.stderr
    )

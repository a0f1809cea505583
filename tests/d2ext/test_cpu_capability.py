"""The CPU kernels' instruction sets: the AVX2 + FMA build runs where the CPU has
both, D2EXT_CPU_CAPABILITY=default forces the generic build, and the generic
build passes the op's tests too (in a fresh process: the choice is made once)."""

import os
import platform
import subprocess
import sys

import pytest

import d2ext

pytestmark = pytest.mark.skipif(
    not d2ext.available_backends()["cpp"].available, reason="d2ext._C is not built"
)

ENV_VAR = "D2EXT_CPU_CAPABILITY"


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


@pytest.mark.skipif(ENV_VAR in os.environ, reason=f"{ENV_VAR} is set")
def test_the_best_instruction_set_is_chosen():
    from d2ext import _C

    flags = _cpu_flags()
    if flags is None:
        pytest.skip("the CPU's flags are not readable here")
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    expected = "avx2" if x86 and {"avx2", "fma"} <= flags else "default"
    assert _C.cpu_capability() == expected
    assert f"CPU kernels ({expected})" in d2ext.available_backends()["cpp"].detail


@pytest.mark.slow
def test_default_forces_the_generic_kernels_and_they_pass_the_op_tests():
    check = _run(["-c", "from d2ext import _C; print(_C.cpu_capability())"], "default")
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip() == "default"
    tests = os.path.join(os.path.dirname(__file__), "test_ms_deform_attn.py")
    result = _run(["-m", "pytest", "-q", "-p", "no:cacheprovider", tests], "default", 600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout


def test_an_unknown_instruction_set_is_a_clear_error():
    result = _run(["-c", "from d2ext import _C; _C.cpu_capability()"], "sse9")
    assert result.returncode != 0
    assert 'D2EXT_CPU_CAPABILITY must be "default" or "avx2", got "sse9"' in result.stderr

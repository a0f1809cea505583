"""The numba backend: parity with the PyTorch reference through the op's entry
point (custom op and autograd included), empty inputs, and determinism.

On a machine without a GPU the kernels run on Numba's CUDA simulator (see
tests/conftest.py), where every CUDA thread is a Python thread: shapes stay tiny.
"""

import numba
import pytest
import torch

import d2ext
from d2ext import numba_kernels

from .msda_inputs import assert_backend_matches_reference, assert_lattice_parity, make_inputs

_available, _reason = numba_kernels.is_available()
pytestmark = pytest.mark.skipif(
    not _available, reason=f"Numba CUDA kernels cannot run here: {_reason}"
)

DEVICE = "cpu" if numba.config.ENABLE_CUDASIM else "cuda"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize(
    "D, shapes, P",
    [
        (1, [(3, 4)], 1),
        (3, [(3, 4), (2, 3)], 3),
        (32, [(3, 4), (2, 3)], 1),
        (33, [(2, 3)], 3),
    ],
    ids=["D1-L1-P1", "D3-L2-P3", "D32-L2-P1", "D33-L1-P3"],
)
def test_matches_reference(D, shapes, P, dtype):
    assert_backend_matches_reference(
        "numba", make_inputs(2, 3, 2, D, shapes, P, dtype=dtype, device=DEVICE)
    )


def test_on_the_pixel_lattice():
    assert_lattice_parity("numba", DEVICE)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_empty_queries(dtype):
    inputs = make_inputs(2, 0, 2, 3, [(3, 4), (2, 3)], 2, dtype=dtype, device=DEVICE)
    output = numba_kernels.forward(*inputs)
    assert output.shape == (2, 0, 6) and output.dtype == dtype
    grads = numba_kernels.backward(output, *inputs)
    for grad, like in zip(grads, (inputs[0], inputs[3], inputs[4])):
        assert grad.shape == like.shape and grad.dtype == dtype
    assert not grads[0].any()


def test_half_types_are_refused():
    value, *rest = make_inputs(1, 2, 1, 2, [(2, 2)], 1, dtype=torch.float32, device=DEVICE)
    with pytest.raises(RuntimeError, match="'numba' backend supports float32 and float64"):
        d2ext.ms_deform_attn(value.half(), *rest, backend="numba")


def test_deterministic_mode_refuses_the_atomic_backward():
    value, *rest = make_inputs(1, 2, 1, 2, [(2, 2)], 1, device=DEVICE)
    value.requires_grad_()
    output = d2ext.ms_deform_attn(value, *rest, backend="numba")
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with pytest.raises(
            RuntimeError, match="d2ext::ms_deform_attn backward with the 'numba' backend"
        ):
            output.sum().backward()
    finally:
        torch.use_deterministic_algorithms(previous)

"""Which MSDA backends can run here, and which one a call uses.

Backends:
    "cpp"    the compiled extension d2ext._C (CPU, and CUDA when compiled with it)
    "numba"  Numba CUDA JIT kernels (CUDA tensors; CPU tensors under NUMBA_ENABLE_CUDASIM=1)
    "torch"  the pure PyTorch reference (any device)
"""

import os
from typing import NamedTuple

import torch

BACKENDS = ("cpp", "numba", "torch")
BACKEND_ENV_VAR = "D2EXT_BACKEND"
NUMBA_DTYPES = (torch.float32, torch.float64)


class BackendInfo(NamedTuple):
    available: bool
    devices: tuple  # device types the backend runs on, e.g. ("cpu", "cuda")
    detail: str  # what it runs on, or why it is unavailable


def _cpp_info() -> BackendInfo:
    try:
        from d2ext import _C
    except ImportError as e:
        return BackendInfo(
            False, (), f"d2ext._C is not built ({e}); build it with `pip install -e .`"
        )
    cpu = f"CPU kernels ({_C.cpu_capability()})"
    if _C.cuda_compiled():
        return BackendInfo(True, ("cpu", "cuda"), f"compiled extension, {cpu} and CUDA kernels")
    return BackendInfo(True, ("cpu",), f"compiled extension, {cpu} only (built without CUDA)")


def _numba_info() -> BackendInfo:
    from d2ext import numba_kernels

    ok, reason = numba_kernels.is_available()
    if not ok:
        return BackendInfo(False, (), reason)
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        return BackendInfo(
            True, ("cpu",), "Numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1) on CPU tensors"
        )
    return BackendInfo(True, ("cuda",), "Numba CUDA JIT kernels")


_TORCH_INFO = BackendInfo(True, ("cpu", "cuda"), "pure PyTorch reference (grid_sample)")
_cache: dict = {"torch": _TORCH_INFO}


def backend_info(name: str) -> BackendInfo:
    """The BackendInfo of one backend; probed once, on first use."""
    if name not in _cache:
        _cache[name] = _cpp_info() if name == "cpp" else _numba_info()
    return _cache[name]


def available_backends() -> dict:
    """{backend name: BackendInfo} for every backend: whether it runs here, on
    which device types, and if not, why."""
    return {name: backend_info(name) for name in BACKENDS}


def _unusable_reason(name: str, device: torch.device, dtype: torch.dtype):
    info = backend_info(name)
    if not info.available:
        return f"the {name!r} backend is unavailable: {info.detail}"
    if device.type not in info.devices:
        devices = "/".join(info.devices)
        return f"the {name!r} backend runs on {devices} tensors ({info.detail}), got {device.type}"
    if name == "numba" and dtype not in NUMBA_DTYPES:
        return f"the 'numba' backend supports float32 and float64, got {dtype}"
    return None


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """The concrete backend for a call: "auto" (or $D2EXT_BACKEND, which
    overrides "auto") picks cpp where it runs on `device`, else numba, else torch.
    A named backend that cannot run the call raises RuntimeError saying why."""
    if backend == "auto":
        backend = os.environ.get(BACKEND_ENV_VAR, "auto") or "auto"
        if backend not in BACKENDS + ("auto",):
            raise ValueError(
                f"${BACKEND_ENV_VAR} must be one of {BACKENDS + ('auto',)}, got {backend!r}"
            )
    if backend == "auto":
        if _unusable_reason("cpp", device, dtype) is None:
            return "cpp"
        # never the simulator: it is for tests
        if device.type == "cuda" and _unusable_reason("numba", device, dtype) is None:
            return "numba"
        return "torch"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS + ('auto',)}, got {backend!r}")
    reason = _unusable_reason(backend, device, dtype)
    if reason is not None:
        raise RuntimeError(reason)
    return backend

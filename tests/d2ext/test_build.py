"""The build's defaults: where no GPU is visible and no architectures are named,
the CUDA kernel is compiled for every architecture torch supports, with PTX for
newer GPUs (a build for one GPU only would fail elsewhere)."""

import glob
import os
import subprocess
import sys

import pytest
import torch

import d2ext

from ..scripts import ROOT


def _torch_archs():
    return [
        arch.removeprefix("sm_") for arch in torch.cuda.get_arch_list() if arch.startswith("sm_")
    ]


@pytest.mark.skipif(
    torch.version.cuda is None, reason="torch is a CPU build: nothing to compile for GPUs"
)
def test_default_arch_list_is_torchs_with_ptx():
    code = (
        "import runpy; "
        "print(runpy.run_path('setup.py', run_name='helpers')['_default_arch_list']())"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    archs = result.stdout.strip().split(";")
    assert len(archs) >= 2 and archs[-1].endswith("+PTX"), archs
    assert [a.removesuffix("+PTX").replace(".", "") for a in archs] == _torch_archs()


def _cuobjdump():
    import nvidia

    found = [
        p
        for root in nvidia.__path__
        for p in glob.glob(os.path.join(root, "cu*", "bin", "cuobjdump"))
    ]
    return found[0] if found else None


def _built_without_gpu_or_archs():
    info = d2ext.available_backends()["cpp"]
    return (
        "cuda" in info.devices
        and not torch.cuda.is_available()
        and not os.environ.get("TORCH_CUDA_ARCH_LIST")
    )


@pytest.mark.skipif(
    not _built_without_gpu_or_archs(),
    reason="the CUDA kernel was not built by default where no GPU is visible",
)
def test_cuda_build_runs_on_every_torch_architecture_and_newer():
    from d2ext import _C

    listing = subprocess.run(
        [_cuobjdump(), "--list-elf", "--list-ptx", _C.__file__],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    archs = _torch_archs()
    for arch in archs:
        assert f".sm_{arch}.cubin" in listing, f"no sm_{arch} code in {_C.__file__}:\n{listing}"
    assert f".sm_{archs[-1]}.ptx" in listing, (
        f"no PTX for GPUs newer than sm_{archs[-1]}:\n{listing}"
    )

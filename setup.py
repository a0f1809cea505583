"""Builds d2ext._C (the MSDA op's C++ CPU kernel, and its CUDA kernel when a
CUDA toolkit is found) and installs the d2ext and deformable_detr packages.

Environment:
    FORCE_CUDA=1           compile the CUDA kernel (fail if it cannot be)
    FORCE_CUDA=0           never compile it
    CUDA_HOME              CUDA toolkit (default: /usr/local/cuda when it exists)
    TORCH_CUDA_ARCH_LIST   GPU architectures to compile for. Default: those of the
                           visible GPUs; with none visible, every architecture the
                           installed torch is built for, the newest also as PTX

Without FORCE_CUDA, the CUDA kernel is compiled when torch is a CUDA build and
a CUDA toolkit is found, whether or not a GPU is visible.
"""

import glob
import os
import re
import sys

from setuptools import find_packages, setup

# torch guesses CUDA_HOME from `which nvcc` and can land on a prefix it cannot
# link against; prefer the conventional toolkit location.
if "CUDA_HOME" not in os.environ and os.path.exists("/usr/local/cuda/bin/nvcc"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

import torch  # noqa: E402
from torch.utils.cpp_extension import (  # noqa: E402
    CUDA_HOME,
    BuildExtension,
    CppExtension,
    CUDAExtension,
)

CSRC = os.path.join("d2ext", "csrc")


def _with_cuda() -> bool:
    force = os.environ.get("FORCE_CUDA")
    if force is not None:
        return force == "1"
    return (
        torch.version.cuda is not None
        and CUDA_HOME is not None
        and os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc"))
    )


def _default_arch_list() -> str:
    """The architectures of the installed torch's own CUDA kernels, the newest
    also as PTX (e.g. "7.5;8.0;8.6;9.0;10.0;12.0+PTX"): a build made where no GPU
    is visible then runs wherever torch does, and on newer GPUs through the
    driver's just-in-time compilation of the PTX."""
    archs = []
    for arch in torch.cuda.get_arch_list():
        match = re.fullmatch(r"sm_(\d+)(\w*)", arch)  # "sm_90" -> "9.0", "sm_100a" -> "10.0a"
        if match:
            archs.append(f"{match[1][:-1]}.{match[1][-1]}{match[2]}")
    if not archs:
        raise RuntimeError(
            "cannot tell which GPU architectures to compile for: no GPU is visible and torch "
            f"{torch.__version__} lists none; set TORCH_CUDA_ARCH_LIST (e.g. '8.0;9.0+PTX') "
            "or FORCE_CUDA=0"
        )
    return ";".join(archs) + "+PTX"


def _set_arch_list() -> None:
    """Without TORCH_CUDA_ARCH_LIST, torch compiles for the visible GPUs, and
    fails where there is none: then use _default_arch_list()."""
    if os.environ.get("TORCH_CUDA_ARCH_LIST") or torch.cuda.is_available():
        return
    os.environ["TORCH_CUDA_ARCH_LIST"] = archs = _default_arch_list()
    print(f"d2ext: no GPU visible; compiling the CUDA kernel for TORCH_CUDA_ARCH_LIST={archs}")


def cuda_library_include_dirs():
    """ATen's CUDA headers include cuBLAS/cuSPARSE/cuSOLVER headers, which a bare
    CUDA toolkit may lack; torch's pip wheels bring them in nvidia/cu*/include.
    Those are searched after the toolkit's own headers (-isystem). Also used by
    tools/benchmark_msda.py to build the official kernel alike."""
    if os.path.exists(os.path.join(CUDA_HOME or "", "include", "cusparse.h")):
        return []
    try:
        import nvidia
    except ImportError:
        return []
    return [d for root in nvidia.__path__ for d in glob.glob(os.path.join(root, "cu*", "include"))]


def _extension():
    sources = [os.path.join(CSRC, "ms_deform_attn.cpp")] + glob.glob(
        os.path.join(CSRC, "cpu", "*.cpp")
    )
    # at::parallel_for is inline OpenMP in torch's headers: without -fopenmp it
    # runs serially. The extension then shares the libgomp that torch loaded.
    openmp = ["-fopenmp"] if sys.platform.startswith("linux") else ["-fopenmp-simd"]
    extra_compile_args = {"cxx": ["-O3"] + openmp}
    if _with_cuda():
        _set_arch_list()
        sources += glob.glob(os.path.join(CSRC, "cuda", "*.cu"))
        # --threads: the architectures compile in parallel
        extra_compile_args["nvcc"] = [
            "-O3",
            "-lineinfo",
            "--threads",
            os.environ.get("MAX_JOBS", "2"),
        ]
        for include in cuda_library_include_dirs():
            extra_compile_args["nvcc"] += ["-isystem", include]
        return CUDAExtension(
            "d2ext._C",
            sources,
            define_macros=[("D2EXT_WITH_CUDA", None)],
            extra_compile_args=extra_compile_args,
            extra_link_args=openmp,
        )
    return CppExtension(
        "d2ext._C", sources, extra_compile_args=extra_compile_args, extra_link_args=openmp
    )


if __name__ == "__main__":  # as pip runs it; tests load the helpers above without building
    setup(
        name="d2ext-deformable-detr",
        version="0.1.0",
        description="Deformable DETR for detectron2, with a multi-scale deformable attention op",
        packages=find_packages(include=["d2ext", "d2ext.*"])
        + find_packages(
            "projects/DeformableDETR", include=["deformable_detr", "deformable_detr.*"]
        ),
        package_dir={"deformable_detr": "projects/DeformableDETR/deformable_detr"},
        python_requires=">=3.10",
        ext_modules=[_extension()],
        cmdclass={"build_ext": BuildExtension},
    )

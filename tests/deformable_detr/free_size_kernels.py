"""Exports a tiny model (the multi-scale variant) at bf16 into an AOTInductor package
with a free image size, as tools/deploy/export_model.py does, and prints one JSON line about
the C++ kernels Inductor generated for it:

    python -m tests.deformable_detr.free_size_kernels

{"kernels": int, "token_count_modulo": [kernel name, ...], "scalar_exp": [...]}:
the kernels that take an index modulo an expression of both the image height and
width (the token count: an integer division per element), and those that compute an
exponential in scalar code (the softmax's transposed layout). Run in a fresh process
by test_export.py (a warm compile cache would skip the compile).
"""

import json
import re
import tempfile

import torch

from deformable_detr.export.artefacts import export

from .export_parity import EXPORT_SIZE
from .int8_fusion import generated_code
from .tiny_model import build_model

KERNEL = re.compile(r'extern "C"\s+void\s+(\w+)\(')
MODULO = "% static_cast<int64_t>("


def kernel_sources(package_path: str) -> dict:
    """Kernel name -> its C++ source, from the package's generated kernel file."""
    code = generated_code(package_path, "kernel")
    starts = [(m.start(), m.group(1)) for m in KERNEL.finditer(code)]
    ends = [start for start, _ in starts[1:]] + [len(code)]
    return {name: code[start:end] for (start, name), end in zip(starts, ends)}


def moduli(source: str):
    """The expressions that indices in `source` are taken modulo of."""
    position = source.find(MODULO)
    while position >= 0:
        start = end = position + len(MODULO)
        depth = 1
        while depth and end < len(source):
            depth += {"(": 1, ")": -1}.get(source[end], 0)
            end += 1
        yield source[start : end - 1]
        position = source.find(MODULO, end)


def main():
    torch.manual_seed(0)
    model = build_model("multi_scale").eval()
    image = torch.rand((3, *EXPORT_SIZE)) * 255
    with tempfile.TemporaryDirectory() as scratch:
        # bf16: in float32 the softmax reads the matrix product's output directly,
        # where under autocast it reads it through the cast to float32 and the views
        path, _ = export(model, image, "aoti", scratch, precision="bf16")
        kernels = kernel_sources(path)
    # the kernels' size arguments ks0 and ks1 are the image's height and width
    token_count_modulo = [
        name
        for name, source in kernels.items()
        if any("ks0" in m and "ks1" in m for m in moduli(source))
    ]
    scalar_exp = [name for name, source in kernels.items() if "std::exp(" in source]
    print(
        json.dumps(
            {
                "kernels": len(kernels),
                "token_count_modulo": token_count_modulo,
                "scalar_exp": scalar_exp,
            }
        )
    )


if __name__ == "__main__":
    main()

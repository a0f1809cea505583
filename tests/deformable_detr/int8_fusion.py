"""Quantizes one FeedForward block (deformable_detr.export.pt2e_int8.quantize_graph,
the int8 model's recipe) with a free token count, as an exported encoder
has it, compiles it into an AOTInductor package with freezing (as save_aoti does) and
prints, as one JSON line, the post-operations Inductor gave oneDNN's int8 linear
kernels in the package's generated code:

    python -m tests.deformable_detr.int8_fusion [ROW_BLOCKS]

The block runs its rows in ROW_BLOCKS blocks (FeedForward's row_blocks, 1 by default).
{"unary": [...], "binary": [...]}: for each qlinear_pointwise call, the name of its
fused element-wise operation ("relu", "none"), and for each binary one, its binary
operation ("sum" for a fused residual add). Run in a fresh process by
test_quantization.py (a warm compile cache would hide the first compile's result).
"""

import json
import os
import re
import sys
import tempfile
import zipfile

import torch

from deformable_detr.export.artefacts import INDUCTOR_INFERENCE_OPTIONS
from deformable_detr.export.pt2e_int8 import quantize_graph
from deformable_detr.modeling.deformable_transformer import FeedForward

# the post-operation argument of the generated calls of oneDNN's int8 linear kernels
UNARY_CALL = r'aoti_torch_cpu__qlinear_pointwise_tensor\([^;]*?"(\w+)", std::array'
BINARY_CALL = r'aoti_torch_cpu__qlinear_pointwise_binary_tensor\([^;]*?"(sum|add)"'


def generated_code(package_path: str, kind: str = "wrapper") -> str:
    """The C++ source of an AOTInductor package: its "wrapper" (the calls of the
    operators it runs) or its "kernel" file (the kernels Inductor generated)."""
    with zipfile.ZipFile(package_path) as package:
        (source,) = [name for name in package.namelist() if name.endswith(f"{kind}.cpp")]
        return package.read(source).decode()


def fused_post_operations(row_blocks: int = 1) -> dict:
    torch.manual_seed(0)
    block = FeedForward(hidden_dim=32, dim_feedforward=64, dropout=0.0, row_blocks=row_blocks)
    block.eval()
    tokens = torch.randn(1, 40, 32)
    dynamic = {"x": {1: torch.export.Dim("tokens", min=16)}}
    with torch.no_grad():
        program = torch.export.export(block, (tokens,), dynamic_shapes=dynamic, strict=True)
        quantized = quantize_graph(program.module(), [(tokens,)])
        program = torch.export.export(quantized, (tokens,), dynamic_shapes=dynamic)
        with tempfile.TemporaryDirectory() as scratch:
            code = generated_code(
                torch._inductor.aoti_compile_and_package(
                    program,
                    package_path=os.path.join(scratch, "block_aoti.pt2"),
                    inductor_configs=INDUCTOR_INFERENCE_OPTIONS,
                )
            )
    return {"unary": re.findall(UNARY_CALL, code), "binary": re.findall(BINARY_CALL, code)}


if __name__ == "__main__":
    print(json.dumps(fused_post_operations(*(int(arg) for arg in sys.argv[1:2]))))

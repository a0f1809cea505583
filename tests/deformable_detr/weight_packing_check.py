"""Quantizes a small convolution-and-linear network by the int8 model's PT2E recipe,
exports it with a free image size, compiles it into an AOTInductor package as
save_aoti does (its Inductor options and weight packing), and prints one JSON line
saying which input shape each int8 weight was packed for, and how far the package's
output is from the quantized graph's, run eagerly, at another image size. Run in a
fresh process by test_export.py (a warm compile cache would skip the compile):

    python -m tests.deformable_detr.weight_packing_check

{"packed": [[kind, shape or null], ...], "difference": float, "scale": float}; kind is
"convolution" or "linear"; scale is the largest absolute output.
"""

import json
import os
import tempfile

import torch
from torch import nn

from deformable_detr.export import weight_packing
from deformable_detr.export.artefacts import INDUCTOR_INFERENCE_OPTIONS
from deformable_detr.export.pt2e_int8 import quantize_graph

EXAMPLE_SIZE = (40, 56)
OTHER_SIZE = (51, 33)


class ConvolutionsThenLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3)
        self.down = nn.Conv2d(16, 32, 3, stride=2)
        self.head = nn.Linear(32, 8)

    def forward(self, image):
        features = self.down(torch.relu(self.stem(image)))
        # on 2-D rows, as the model's FeedForward: torchao's int8 linear patterns fail on
        # 3-D input with a free size
        rows = features.flatten(2).transpose(1, 2).reshape(-1, features.shape[1])
        return self.head(rows)


def packed_shapes(graph: torch.fx.Graph):
    """[kind, shape] of each int8 weight packing in `graph`, after the freezing passes."""
    packed = []
    for node in graph.nodes:
        packet = getattr(node.target, "overloadpacket", node.target)
        if packet is torch.ops.onednn.qconv_prepack:
            packed.append(["convolution", node.args[8]])
        elif packet is torch.ops.onednn.qlinear_prepack:
            packed.append(["linear", node.args[1]])
    return [[kind, list(shape) if shape is not None else None] for kind, shape in packed]


def free_size_program(module, image):
    size = {2: torch.export.Dim("height", min=8), 3: torch.export.Dim("width", min=8)}
    return torch.export.export(module, (image,), dynamic_shapes={"image": size})


def compile_package(module, image, path, seen):
    program = free_size_program(module, image)
    packing = weight_packing.pack_weights_for_example_size

    def recorded(graph):
        changed = packing(graph)
        seen.extend(packed_shapes(graph))
        return changed

    weight_packing.pack_weights_for_example_size = recorded
    try:
        with weight_packing.packed_for_example_size():
            return torch._inductor.aoti_compile_and_package(
                program, package_path=path, inductor_configs=INDUCTOR_INFERENCE_OPTIONS
            )
    finally:
        weight_packing.pack_weights_for_example_size = packing


def main():
    torch.manual_seed(0)
    module = ConvolutionsThenLinear().eval()
    image = torch.rand(1, 3, *EXAMPLE_SIZE)
    other = torch.rand(1, 3, *OTHER_SIZE)
    with torch.no_grad(), tempfile.TemporaryDirectory() as scratch:
        quantized = quantize_graph(free_size_program(module, image).module(), [(image,), (other,)])
        seen = []
        path = compile_package(quantized, image, os.path.join(scratch, "int8.pt2"), seen)
        expected = quantized(other)
        difference = (torch._inductor.aoti_load_package(path)(other) - expected).abs().max()
    results = {
        "packed": seen,
        "difference": difference.item(),
        "scale": expected.abs().max().item(),
    }
    print(json.dumps(results))


if __name__ == "__main__":
    main()

"""Compiles a small float32 network of linear layers with compile_inference (Inductor
with freezing, sizes fixed: where Inductor packs float linear weights for MKL) and
prints one JSON line: the linear ops of the graph after the freezing passes, how many
linear_layers_on_onednn replaced, and the largest difference from eager. Run in a
fresh process by test_export.py (a warm compile cache would skip the compile):

    python -m tests.deformable_detr.linear_packing_check

{"ops": [...], "replaced": int, "difference": float, "scale": float}
"""

import json

import torch
from torch import nn

from deformable_detr.export import weight_packing
from deformable_detr.export.artefacts import compile_inference


def linear_ops(graph: torch.fx.Graph):
    names = {str(node.target) for node in graph.nodes if node.op == "call_function"}
    return sorted(name for name in names if "linear" in name)


def main():
    torch.manual_seed(0)
    network = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32)).eval()
    rows = torch.rand(300, 64)
    seen = {"ops": [], "replaced": 0}
    replace = weight_packing.linear_layers_on_onednn

    def recorded(graph):
        replaced = replace(graph)
        seen["replaced"] += replaced
        seen["ops"] += linear_ops(graph)
        return replaced

    weight_packing.linear_layers_on_onednn = recorded
    try:
        # compiled afresh: a graph from the cache would skip the freezing passes
        compiled = compile_inference(network, {"fx_graph_cache": False})(rows)
    finally:
        weight_packing.linear_layers_on_onednn = replace
    with torch.no_grad():
        expected = network(rows)
    seen["difference"] = (compiled - expected).abs().max().item()
    seen["scale"] = expected.abs().max().item()
    print(json.dumps(seen))


if __name__ == "__main__":
    main()

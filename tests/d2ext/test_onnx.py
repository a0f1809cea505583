"""d2ext.onnx: the op exported to standard ONNX ops, run by onnxruntime at level
sizes and query counts other than the exported ones, against the reference."""

import onnx
import onnxruntime
import pytest
import torch
from torch.export import Dim

import d2ext
from d2ext.onnx import OPSET, TRANSLATION_TABLE
from d2ext.reference import ms_deform_attn_reference

from .msda_inputs import TOLERANCE, make_inputs

NAMES = ["value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights"]


class _MSDA(torch.nn.Module):
    def forward(
        self, value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    ):
        return d2ext.ms_deform_attn(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )


def _export(module, inputs, names, path):
    """Exports `module` with d2ext's translation to `path`; the batch and query counts
    (dim 1 of the inputs after the level tensors) and value's positions are dynamic."""
    batch, positions, queries = Dim("batch"), Dim("positions"), Dim("queries")
    dynamic_shapes = ({0: batch, 1: positions}, None, None) + tuple(
        {0: batch, 1: queries} for _ in inputs[3:]
    )
    program = torch.onnx.export(
        module.eval(),
        inputs,
        dynamo=True,
        dynamic_shapes=dynamic_shapes,
        custom_translation_table=TRANSLATION_TABLE,
        opset_version=OPSET,
        input_names=names,
    )
    program.save(str(path))
    return path


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory):
    inputs = make_inputs(2, 5, 2, 4, [(6, 5), (3, 3), (2, 1)], 2, dtype=torch.float32)
    return _export(_MSDA(), inputs, NAMES, tmp_path_factory.mktemp("onnx") / "msda.onnx")


def test_exported_graph_has_only_standard_ops(onnx_path):
    model = onnx.load(str(onnx_path))
    onnx.checker.check_model(model)
    domains = {node.domain for node in model.graph.node} | {f.domain for f in model.functions}
    assert domains <= {"", "pkg.onnxscript.torch_lib", "pkg.onnxscript.torch_lib.common"}
    ops = {node.op_type for node in model.graph.node} | {
        n.op_type for f in model.functions for n in f.node
    }
    assert "GridSample" in ops


@pytest.mark.parametrize(
    "N, Lq, shapes",
    [
        (2, 5, [(6, 5), (3, 3), (2, 1)]),
        (1, 17, [(13, 7), (7, 4), (4, 2)]),
        (3, 1, [(1, 1), (5, 9), (2, 2)]),
    ],
)
def test_onnxruntime_matches_reference(onnx_path, N, Lq, shapes):
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    inputs = make_inputs(N, Lq, 2, 4, shapes, 2, dtype=torch.float32)
    (output,) = session.run(None, {name: t.numpy() for name, t in zip(NAMES, inputs)})
    tol = TOLERANCE[torch.float32]
    torch.testing.assert_close(
        torch.from_numpy(output), ms_deform_attn_reference(*inputs), rtol=tol, atol=tol
    )


class _MSDAAtOffsets(torch.nn.Module):
    def forward(self, value, spatial_shapes, level_start_index, reference, offsets, weights):
        scale = 1.0 / spatial_shapes.flip(-1).to(reference.dtype)
        return d2ext.ms_deform_attn_at_offsets(
            value, spatial_shapes, level_start_index, reference, offsets, scale, weights
        )


def test_at_offsets_exports_and_matches_reference(tmp_path):
    """The reference points and offsets become locations in ONNX ops before GridSample."""
    names = ["value", "spatial_shapes", "level_start_index", "reference", "offsets", "weights"]

    def inputs(N, Lq, shapes):
        value, spatial_shapes, level_start_index, _, weights = make_inputs(
            N, Lq, 2, 4, shapes, 2, dtype=torch.float32
        )
        reference = torch.rand(N, Lq, len(shapes), 2)
        offsets = torch.randn(N, Lq, 2, len(shapes), 2, 2) * 2
        return value, spatial_shapes, level_start_index, reference, offsets, weights

    path = _export(
        _MSDAAtOffsets(), inputs(2, 5, [(6, 5), (3, 3)]), names, tmp_path / "msda_at_offsets.onnx"
    )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    value, spatial_shapes, level_start_index, reference, offsets, weights = inputs(
        1, 17, [(13, 7), (7, 4)]
    )
    (output,) = session.run(
        None,
        {
            name: t.numpy()
            for name, t in zip(
                names, (value, spatial_shapes, level_start_index, reference, offsets, weights)
            )
        },
    )
    scale = 1.0 / spatial_shapes.flip(-1).float()
    locations = d2ext.ops.sampling_locations_at_offsets(
        reference, offsets, scale.expand_as(reference)
    )
    expected = ms_deform_attn_reference(
        value, spatial_shapes, level_start_index, locations, weights
    )
    tol = TOLERANCE[torch.float32]
    torch.testing.assert_close(torch.from_numpy(output), expected, rtol=tol, atol=tol)

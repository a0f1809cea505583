"""int8 inference on ONNX Runtime: static quantization of an exported ONNX model's
convolutions and linear layers, calibrated on a few training images (never on the
test set, which the int8 model's AP is then measured on).

The float32 graph of ``export(model, image, "onnx", ...)`` is rewritten by
onnxruntime's quantization tool in the QDQ format: weights int8 per output channel,
activations uint8 per tensor with ranges measured on the calibration images, and
onnxruntime runs the quantized convolutions and matrix products in int8. Weights use
7 bits (``reduce_range``): CPUs without VNNI multiply uint8 by int8 in pairs that
saturate int16 at 8 bits. Quantized are the convolutions (backbone, input
projections) and the linear layers with a constant weight, except those named by
``deformable_detr.export.precision.ONNX_INT8_FLOAT32_MODULES`` (sampling offsets,
attention weights, reference points, box heads: their outputs place samples and
boxes; PT2E's int8 quantizes the first two, with less loss). The decoder
self-attention stays float32 too: its products of two activations, and its
in-projections, whose packed weight the graph splits at run time. Everything else
(MSDA's sampling, normalizations, softmax, post-processing) stays float32.
docs/benchmarks.md has the measurements behind the choice.
"""

import ast
from typing import List, Sequence

import numpy as np
import torch

from ..data.build import build_test_loader, dataset_source
from .precision import ONNX_INT8_FLOAT32_MODULES, module_name_pattern

__all__ = ["QUANTIZED_OPS", "calibration_images", "quantizable_nodes", "quantize_onnx"]

QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")
_NAME_SCOPES = "pkg.torch.onnx.name_scopes"  # the exporter's record of a node's modules


def _module_names(node) -> List[str]:
    scopes = next((p.value for p in node.metadata_props if p.key == _NAME_SCOPES), None)
    return ast.literal_eval(scopes) if scopes else []


def quantizable_nodes(
    model, float32_modules: Sequence[str] = ONNX_INT8_FLOAT32_MODULES
) -> List[str]:
    """Names of the nodes of `model` (an onnx.ModelProto from the exporter) to run in
    int8: QUANTIZED_OPS with a constant weight, outside modules named one of
    `float32_modules`."""
    constants = {tensor.name for tensor in model.graph.initializer}
    kept = module_name_pattern(float32_modules)
    names = []
    for node in model.graph.node:
        if node.op_type not in QUANTIZED_OPS or node.input[1] not in constants:
            continue
        if kept is not None and any(kept.search(name) for name in _module_names(node)):
            continue
        names.append(node.name)
    return names


def calibration_images(cfg, count: int) -> List[torch.Tensor]:
    """The first `count` images of the config's training set as an artefact takes them:
    (3, H, W) float32, resized by the test mapper. A config whose training set is its
    test set is refused: the calibration would see the images the AP is measured on."""
    if count < 1:
        raise ValueError(f"int8 calibration takes 1 image or more; got {count}")
    source = dataset_source(cfg, "train")
    if source is not None and source == dataset_source(cfg, "test"):
        raise ValueError(
            f"int8 calibration reads the training set, and {source} is the test set too: "
            "give training data other than the images the model is evaluated on"
        )
    images = []
    for batch in build_test_loader(cfg, "train"):
        images += [inputs["image"].float() for inputs in batch]
        if len(images) >= count:
            break
    return images[:count]


class _CalibrationImages:
    """onnxruntime's CalibrationDataReader over images (3, H, W) float32, read in
    the ranges the calibrator sets (set_range)."""

    def __init__(self, images: Sequence[torch.Tensor]):
        self._images = images
        self.set_range(0, len(images))

    def __len__(self) -> int:
        return len(self._images)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._feeds = iter(
            {"image": np.ascontiguousarray(image.float().numpy())}
            for image in self._images[start_index:end_index]
        )

    def get_next(self):
        return next(self._feeds, None)


def quantize_onnx(
    source: str,
    destination: str,
    images: Sequence[torch.Tensor],
    float32_modules: Sequence[str] = ONNX_INT8_FLOAT32_MODULES,
) -> int:
    """Writes the int8 model of the float32 ONNX file `source` (from
    deformable_detr.export.artefacts) to `destination`, calibrated on `images` (each (3, H, W)
    float32 0-255, as the artefact takes them). Returns how many nodes run in int8."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    if len(images) == 0:
        raise ValueError("int8 quantization needs calibration images; got none")
    nodes = quantizable_nodes(onnx.load(source, load_external_data=False), float32_modules)
    if not nodes:
        raise ValueError(f"{source} has no convolution or linear layer to quantize")
    quantize_static(
        source,
        destination,
        _CalibrationImages(images),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=True,
        op_types_to_quantize=list(QUANTIZED_OPS),  # and to calibrate: only their tensors
        nodes_to_quantize=nodes,
        # ranges merged image by image: one 800x1333 image's activations take gigabytes
        extra_options={"CalibStridedMinMax": 1},
    )
    return len(nodes)

"""int8 inference through PyTorch: PT2E static quantization of ImageToDetections with
torchao's X86InductorQuantizer, for torch.compile and AOTInductor.

The model's graph (torch.export) is annotated by the quantizer's default recipe, with
weights in 7 bits (``WEIGHT_BITS``): weights int8 per output channel, activations uint8
per tensor with ranges observed on a few calibration images (histograms, never the test
set: take them with ``deformable_detr.export.quantization.calibration_images``).
Quantized are the convolutions (backbone and input projections) and the linear layers,
except the modules named by ``deformable_detr.export.precision.FLOAT32_MODULES``
(reference points and box heads), which stay float32 as in the bf16 path; the sampling
offsets and attention weights are quantized (the ONNX int8 path keeps them in float32).
MSDA samples the projected values in bfloat16 (``SAMPLED_VALUE_DTYPE``), accumulating in
float32. The decoder self-attention (``nn.MultiheadAttention``, whose linear layers the
quantizer does not see as ``nn.Linear``), MSDA's sampling, normalizations, softmax and
post-processing stay float32 too.

Inductor compiles the quantized graph with freezing, as the inference paths of
``deformable_detr.export.artefacts`` do (``compile_inference``, ``save_aoti``): it folds
the int8 weights into constants and runs the quantized convolutions and matrix products
on oneDNN's int8 kernels, which use AVX512-VNNI or AVX-VNNI and AMX-INT8 where the CPU
has them. Without freezing (or with autograd on) the graph runs its quantize/dequantize
pairs in float32, slower than the float32 model. docs/benchmarks.md says which int8 path
to pick on which CPU.

    quantized = quantize(ImageToDetections(model), calibration_images(cfg, 16))
    detect = compile_inference(quantized)  # or: save_aoti(quantized, image, path)
    boxes, scores, classes = detect(image)
"""

import contextlib
import dataclasses
import functools
import logging
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from d2ext.modules import MSDeformAttn

from .artefacts import ImageToDetections, export_program
from .precision import FLOAT32_MODULES, module_name_pattern

__all__ = [
    "SAMPLED_VALUE_DTYPE",
    "WEIGHT_BITS",
    "float32_module_names",
    "quantization_config",
    "quantize",
    "quantize_graph",
    "sampled_values_in",
    "weight_per_use",
    "weight_range",
]


class _EnumRegistrationNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "is an Enum subclass" not in record.getMessage()


def _quantizer_api():
    """torchao's prepare_pt2e, convert_pt2e and x86_inductor_quantizer, imported quietly:
    torchao registers an Enum with torch's pytree at import, which torch logs as
    deprecated (torchao's code, not the user's)."""
    pytree_log = logging.getLogger("torch.utils._pytree")
    notice = _EnumRegistrationNotice()
    pytree_log.addFilter(notice)
    try:
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError as e:
        raise ImportError(
            "int8 through PyTorch needs torchao (pip install -r requirements.txt, or "
            "pip install torchao); onnxruntime's int8 is export --format onnx --precision int8"
        ) from e
    finally:
        pytree_log.removeFilter(notice)
    return prepare_pt2e, convert_pt2e, xiq


def float32_module_names(
    module: nn.Module, float32_modules: Sequence[str] = FLOAT32_MODULES
) -> List[str]:
    """Qualified names of `module`'s submodules named one of `float32_modules` (or an
    element of a ModuleList so named), every name of a shared module included: a model
    without box refinement calls one box head under its last name ("bbox_embed.1")."""
    pattern = module_name_pattern(float32_modules)
    if pattern is None:
        return []
    return [
        name
        for name, child in module.named_modules(remove_duplicate=False)
        if pattern.search(name) and not isinstance(child, nn.ModuleList)
    ]


# The dtype MSDA samples the projected values in, in the int8 graph: the value
# projection's int8 output is dequantized to float32, and bfloat16 halves the bytes
# the op gathers (it accumulates in float32). docs/benchmarks.md has the measurement.
SAMPLED_VALUE_DTYPE = torch.bfloat16


# Bits of the int8 weights. oneDNN's int8 kernels for CPUs without VNNI (AVX2 alone)
# multiply uint8 by int8 in adjacent pairs summed in int16 (vpmaddubsw), which saturates
# with 8-bit weights (2 * 255 * 127 > 32767) and moves boxes by several times the error
# of a VNNI CPU; 7 bits cannot saturate. An artefact may run on another CPU than the
# one that exported it, so the weights get 7 bits whatever this CPU has, as in the ONNX
# int8 path. docs/benchmarks.md has the measurement.
WEIGHT_BITS = 7


def weight_range(weight_bits: int = WEIGHT_BITS) -> Tuple[int, int]:
    """(lowest, highest) int8 weight of `weight_bits` bits (2 to 8), symmetric as the
    quantizer's: (-64, 63) for 7."""
    if not 2 <= weight_bits <= 8:
        raise ValueError(f"int8 weights take 2 to 8 bits; got weight_bits={weight_bits}")
    return -(2 ** (weight_bits - 1)), 2 ** (weight_bits - 1) - 1


def quantization_config(weight_bits: int = WEIGHT_BITS):
    """The x86 Inductor quantizer's default static config (uint8 activations per tensor,
    histogram observers; int8 weights per output channel, symmetric) with the weights'
    range cut to `weight_bits` bits (``weight_range``)."""
    lowest, highest = weight_range(weight_bits)
    _, _, xiq = _quantizer_api()
    config = xiq.get_default_x86_inductor_quantization_config()
    weight = dataclasses.replace(config.weight, quant_min=lowest, quant_max=highest)
    return dataclasses.replace(config, weight=weight)


@contextlib.contextmanager
def sampled_values_in(module: nn.Module, dtype: Optional[torch.dtype]):
    """Every MSDeformAttn of `module` samples its values in `dtype` (None: the value
    projection's output dtype) inside the block, and as before after it."""
    attentions = [m for m in module.modules() if isinstance(m, MSDeformAttn)]
    before = [m.sampled_value_dtype for m in attentions]
    for m in attentions:
        m.sampled_value_dtype = dtype
    try:
        yield
    finally:
        for m, dtype_before in zip(attentions, before):
            m.sampled_value_dtype = dtype_before


def quantize(
    module: ImageToDetections,
    images: Sequence[torch.Tensor],
    float32_modules: Sequence[str] = FLOAT32_MODULES,
    sampled_value_dtype: Optional[torch.dtype] = SAMPLED_VALUE_DTYPE,
    weight_bits: int = WEIGHT_BITS,
) -> torch.fx.GraphModule:
    """The int8 graph of `module` (a float32 ImageToDetections), calibrated on `images`
    (each (3, H, W) float32 0-255, as the module takes them), with `float32_modules` kept
    in float32, MSDA sampling values of `sampled_value_dtype` (None: float32) and
    weights of `weight_bits` bits. It takes an image of any size as the module does; run
    it through artefacts.compile_inference or save_aoti (as it is, it computes in
    float32)."""
    weight_range(weight_bits)  # a bad weight_bits fails before the export, not after
    if len(images) == 0:
        raise ValueError("int8 quantization needs calibration images; got none")
    precision = module.model.inference_precision
    if precision != "fp32":
        raise ValueError(f"int8 quantization starts from the float32 model; it is in {precision}")
    float32_names = float32_module_names(module, float32_modules)
    with torch.no_grad(), sampled_values_in(module, sampled_value_dtype):
        # strict export records which function made each op; the quantizer finds the
        # backbone's convolutions by it (detectron2's Conv2d calls F.conv2d itself)
        graph = export_program(module, images[0], strict=True).module()
    return quantize_graph(graph, [(image,) for image in images], float32_names, weight_bits)


def quantize_graph(
    graph: nn.Module,
    calibration_inputs: Sequence[Tuple[torch.Tensor, ...]],
    float32_names: Sequence[str] = (),
    weight_bits: int = WEIGHT_BITS,
) -> torch.fx.GraphModule:
    """The int8 graph of `graph` (an exported program's module) by this module's recipe,
    its activation ranges observed on each tuple of `calibration_inputs`, with the
    submodules of qualified names `float32_names` left in float32 and weights of
    `weight_bits` bits."""
    config = quantization_config(weight_bits)
    prepare_pt2e, convert_pt2e, xiq = _quantizer_api()
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(config)
    for name in float32_names:
        quantizer.set_module_name_qconfig(name, None)
    with torch.no_grad():
        prepared = prepare_pt2e(graph, quantizer)
        for inputs in calibration_inputs:
            prepared(*inputs)
        return weight_per_use(convert_pt2e(prepared))


def weight_per_use(graph: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Gives every dequantize of a weight used by several layers (a layer run on row
    blocks, a head shared by the decoder layers) its own copy of the int8 weight;
    returns `graph`, changed in place. Inductor merges identical dequantize nodes into
    one of several users, which its int8 linear and convolution patterns do not match:
    those layers would run in float32."""
    for node in list(graph.graph.nodes):
        if node.op != "get_attr":
            continue
        dequantizes = [user for user in node.users if _dequantizes(user, node)]
        if len(dequantizes) < 2:
            continue
        weight = functools.reduce(getattr, node.target.split("."), graph)
        for index, user in enumerate(dequantizes[1:], start=1):
            name = f"{node.target.replace('.', '_')}_use{index}"
            graph.register_buffer(name, weight.clone())
            with graph.graph.inserting_before(user):
                copy = graph.graph.get_attr(name)
            copy.meta = dict(node.meta)
            user.replace_input_with(node, copy)
    graph.recompile()
    return graph


def _dequantizes(node: torch.fx.Node, tensor: torch.fx.Node) -> bool:
    """Whether `node` dequantizes `tensor` (its first argument; not a scale or zero point)."""
    return (
        node.op == "call_function"
        and "dequantize" in str(node.target)
        and bool(node.args)
        and node.args[0] is tensor
    )

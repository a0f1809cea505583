"""Inference precision: float32, or bfloat16 autocast with the layers that place
boxes kept in float32.

Under "bf16" the model's inference runs in ``torch.autocast(dtype=torch.bfloat16)``:
convolutions and linear layers compute in bfloat16 (the MSDA op samples bfloat16
values and accumulates in float32, with float32 locations and weights), while
the modules named by ``FLOAT32_MODULES`` run in float32 on float32 inputs, and the
post-processing (scores, top-k, boxes) is float32. ``set_inference_precision``
switches a built model; the configs' ``model.inference_precision`` (yacs
``MODEL.DEFORMABLE_DETR.INFERENCE_PRECISION``) sets it at build time.
"""

import contextlib
import functools
import logging
import re
from typing import Sequence, Tuple

import torch
from torch import nn

__all__ = [
    "FLOAT32_MODULES",
    "ONNX_INT8_FLOAT32_MODULES",
    "PRECISIONS",
    "detection_agreement",
    "full_precision",
    "has_native_bfloat16",
    "inference_autocast",
    "keep_float32",
    "module_name_pattern",
    "set_inference_precision",
]

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")

# Module names (the last part of the qualified name) kept in float32 by the reduced
# precisions (bf16, and int8 through PT2E): the decoder's reference points and the box
# heads, whose outputs are box coordinates (bfloat16's 8 bits would round a
# coordinate near 1 to 1/256 of the image side). The sampling offsets and attention
# weights run reduced: an offset so computed is off by a small part of a pixel, their
# outputs are turned to float32 before the samples are placed (d2ext.MSDeformAttn),
# and in float32 these two layers cost the compiled model a large share of its time
# on CPUs with AMX. docs/benchmarks.md ("Inference precision (CPU)") has the
# measurements behind the list.
FLOAT32_MODULES = ("reference_points", "bbox_embed")
# onnxruntime's int8 (MinMax ranges, 7-bit weights) keeps the sampling layers in
# float32 too: with them in int8 it lost AP and classes at rank on the synthetic set.
ONNX_INT8_FLOAT32_MODULES = ("sampling_offsets", "attention_weights", *FLOAT32_MODULES)


def _check(precision: str) -> None:
    if precision == "int8":
        raise ValueError(
            "inference precision 'int8' is for exported models: export with "
            "tools/deploy/export_model.py --precision int8 --format aoti (Inductor's int8 "
            "kernels) or --format onnx (onnxruntime), and run the artefact with "
            "demo/demo.py --artefact or deformable_detr.export.ArtefactDetector"
        )
    if precision not in PRECISIONS:
        raise ValueError(
            f"inference precision {precision!r}; expected one of {', '.join(PRECISIONS)}"
        )


def inference_autocast(precision: str, device: torch.device):
    """The context the model's inference runs in: bfloat16 autocast on `device`'s
    type for "bf16", nothing for "fp32"."""
    _check(precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def full_precision(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` in float32 when autocast left it in a half type, else as it is
    (a float64 model stays float64)."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def _float32_forward(forward, *args, **kwargs):
    tensor = next((a for a in args if torch.is_tensor(a)), None)
    device_type = tensor.device.type if tensor is not None else "cpu"
    if not torch.is_autocast_enabled(device_type):
        return forward(*args, **kwargs)
    args = [a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
    with torch.autocast(device_type=device_type, enabled=False):
        return forward(*args, **kwargs)


def module_name_pattern(names: Sequence[str]):
    """A regex that finds a qualified module name whose last part is one of `names`,
    or an element of a ModuleList so named ("decoder.bbox_embed.2"); None for no names."""
    if not names:
        return None
    return re.compile(rf"(^|\.)({'|'.join(map(re.escape, names))})(\.\d+)?$")


def keep_float32(model: nn.Module, names: Sequence[str] = FLOAT32_MODULES) -> int:
    """Makes every submodule named one of `names` (or an element of a ModuleList so
    named) run in float32 on float32 inputs inside an autocast region (its
    parameters and state_dict are unchanged). Returns how many modules it changed;
    applying it twice changes nothing."""
    pattern = module_name_pattern(names)
    if pattern is None:
        return 0
    changed = 0
    for qualified_name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) or not pattern.search(qualified_name):
            continue
        if getattr(module, "_float32", False):
            continue
        module.forward = functools.partial(_float32_forward, module.forward)
        module._float32 = True
        changed += 1
    return changed


def has_native_bfloat16() -> bool:
    """Whether this CPU computes in bfloat16 natively (AVX512-BF16 or AMX)."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def set_inference_precision(
    model: nn.Module, precision: str, float32_modules: Sequence[str] = FLOAT32_MODULES
) -> nn.Module:
    """Sets `model`'s inference precision ("fp32" or "bf16", with `float32_modules`
    kept in float32); returns the model. Warns when bfloat16 is asked for on a CPU
    that emulates it."""
    _check(precision)
    if precision == "bf16":
        keep_float32(model, float32_modules)
        if not has_native_bfloat16():
            logger.warning(
                "inference_precision=bf16 on a CPU without AVX512-BF16 or AMX: PyTorch "
                f"emulates bfloat16 here ({torch.backends.cpu.get_cpu_capability()}), which "
                "is many times slower than float32 (docs/benchmarks.md); on a GPU, or "
                "a CPU with those instructions, it is the faster path"
            )
    model.inference_precision = precision
    return model


def detection_agreement(detections, reference, iou: float = 0.9) -> Tuple[int, int, int]:
    """How far reduced-precision detections follow the float32 ones, over images:
    `detections` and `reference` are lists of Instances (best first), one per image.
    Returns (ranks where the class is the reference's, reference detections with a
    detection of their class at IoU >= `iou` among `detections`, reference detections)."""
    from detectron2.structures import pairwise_iou

    same_class = same_box = total = 0
    for got, expected in zip(detections, reference):
        n = min(len(got), len(expected))
        same_class += int((got.pred_classes[:n] == expected.pred_classes[:n]).sum())
        overlap = pairwise_iou(expected.pred_boxes, got.pred_boxes)
        overlap[expected.pred_classes[:, None] != got.pred_classes[None, :]] = 0
        same_box += int((overlap >= iou).any(dim=1).sum())
        total += len(expected)
    return same_class, same_box, total

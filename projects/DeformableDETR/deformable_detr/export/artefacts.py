"""Deployment: the model as a function of one image tensor, exported with a
dynamic image size to TorchScript, ONNX (standard ops only), torch.export's
ExportedProgram and an AOTInductor package.

Every artefact takes one image (3, H, W) float32, 0-255 in the config's input
format (INPUT.FORMAT, or the test mapper's image_format: RGB for the configs
here), resized as the test mapper and DefaultPredictor resize it, H and W at
least MIN_SIZE. It returns ``boxes`` (K, 4) (x1, y1, x2, y2) in pixels of that
image, clipped to it, ``scores`` (K,) and ``classes`` (K,) int64, best first,
K = min(test_topk, num_queries * num_classes) (DETR's softmax head: min(test_topk,
num_queries)): the Instances the eager model
returns for that image, except that the empty boxes detector_postprocess drops
are kept (a fixed K keeps the graph free of data-dependent shapes).

Precisions: "fp32"; "bf16" (bfloat16 autocast, deformable_detr.export.precision) for
torchscript, exported-program and aoti; "int8" (static quantization calibrated on a few
images) for ONNX, run by onnxruntime (deformable_detr.export.quantization), and for aoti,
PT2E quantization compiled by Inductor (deformable_detr.export.pt2e_int8).

An aoti package may instead be compiled for the sample image's size only
(``fixed_size``): Inductor then specializes every kernel and packs every convolution's
weights for that size. With a free size the int8 weights are packed for the sample
image's size too (deformable_detr.export.weight_packing, which also keeps int8
convolution weights out of padded layouts at any size), the float convolution weights
at each call. load_artefact refuses other sizes to a fixed-size package;
docs/benchmarks.md measures the difference.
"""

import functools
import os
import tempfile
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.modeling import detector_postprocess
from detectron2.structures import Boxes, Instances
from torch import nn

from ..modeling.deformable_transformer import sizes_as_tensor
from ..modeling.meta_arch.set_prediction import SetPredictionDetector
from .precision import PRECISIONS, full_precision, inference_autocast, set_inference_precision
from .weight_packing import packed_for_example_size

__all__ = [
    "EXPORT_PRECISIONS",
    "FORMATS",
    "ArtefactDetector",
    "FixedSizePackage",
    "ImageSizeError",
    "ImageToDetections",
    "artefact_format",
    "check_precision",
    "compile_inference",
    "dynamic_image_shapes",
    "export",
    "fixed_image_size",
    "load_artefact",
]

MIN_SIZE = (
    65  # a stride-64 level then has 2 pixels a side or more (a side of 1 specializes its strides)
)


class ImageToDetections(nn.Module):
    """A DETR-family model's inference (DeformableDETR, DETR) on one unpadded image,
    in tensors only."""

    def __init__(self, model: SetPredictionDetector):
        super().__init__()
        check_exportable(model)
        self.model = model
        self.eval()

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """image: (3, H, W) float. Returns boxes (K, 4), scores (K,), classes (K,)."""
        images = self.model.normalize(image)[None]
        unpadded = torch.zeros_like(images[:, 0], dtype=torch.bool)
        with inference_autocast(self.model.inference_precision, image.device):
            outputs = self.model.predict_masked(images, unpadded)
        scores, classes, boxes = self.model.select_topk(
            full_precision(outputs["pred_logits"]), full_precision(outputs["pred_boxes"])
        )
        height, width = image.shape[-2:]
        size = sizes_as_tensor([width, height, width, height], boxes.dtype, boxes.device)
        boxes = torch.minimum((boxes[0] * size).clamp(min=0), size)  # as detector_postprocess clips
        return boxes, scores[0], classes[0]


def check_exportable(model: nn.Module) -> None:
    """Raises ValueError, naming the model's class, when it cannot be exported."""
    if not isinstance(model, SetPredictionDetector):
        raise ValueError(
            f"a {type(model).__name__} cannot be exported: the exporters trace the tensor-only "
            "inference of the DETR family (SetPredictionDetector: DeformableDETR and DETR "
            "configs); evaluate this model with tools/lazyconfig_train_net.py --eval-only"
        )


def dynamic_image_shapes():
    """torch.export's dynamic_shapes for ImageToDetections: height and width free."""
    height = torch.export.Dim("height", min=MIN_SIZE)
    width = torch.export.Dim("width", min=MIN_SIZE)
    return {"image": {1: height, 2: width}}


def export_program(
    module: nn.Module, image: torch.Tensor, strict: bool = False, fixed_size: bool = False
) -> torch.export.ExportedProgram:
    """torch.export of `module` traced on `image`, for any image size (or `image`'s only)."""
    with torch.no_grad():
        return torch.export.export(
            module,
            (image,),
            dynamic_shapes=None if fixed_size else dynamic_image_shapes(),
            strict=strict,
        )


def save_torchscript(module: nn.Module, image: torch.Tensor, path: str):
    # sizes are traced as tensors, so the trace holds for any image size
    with torch.no_grad():
        torch.jit.trace(module, (image,), check_trace=False).save(path)


def save_onnx(module: nn.Module, image: torch.Tensor, path: str):
    from d2ext.onnx import OPSET, TRANSLATION_TABLE

    with torch.no_grad():
        program = torch.onnx.export(
            module,
            (image,),
            dynamo=True,
            dynamic_shapes=dynamic_image_shapes(),
            custom_translation_table=TRANSLATION_TABLE,
            opset_version=OPSET,
            input_names=["image"],
            output_names=["boxes", "scores", "classes"],
        )
    program.save(path)


def save_program(module: nn.Module, image: torch.Tensor, path: str):
    torch.export.save(export_program(module, image), path)


# Inductor options of the compiled inference paths (torch.compile and the aoti package).
# Freezing makes the weights constants: Inductor folds their precision casts into them
# and gives oneDNN its weights pre-packed, in the layout its AMX and AVX-512 kernels read.
INDUCTOR_INFERENCE_OPTIONS = {"freezing": True}


def compile_inference(module: nn.Module, options: Optional[Dict] = None) -> Callable:
    """torch.compile of an inference module (ImageToDetections) with the Inductor
    options of the aoti package, updated by `options` (Inductor config names); the
    returned function runs it without autograd."""
    compiled = torch.compile(module)
    options = {**INDUCTOR_INFERENCE_OPTIONS, **(options or {})}

    def run(*inputs):
        # torch.compile's options= does not reach freezing, which is read before them
        with torch.no_grad(), torch._inductor.config.patch(options), packed_for_example_size():
            return compiled(*inputs)

    return run


# The package metadata that names the one image size ("HxW") a fixed-size package takes.
FIXED_SIZE_KEY = "image_size"


def save_aoti(module: nn.Module, image: torch.Tensor, path: str, fixed_size: bool = False):
    options = dict(INDUCTOR_INFERENCE_OPTIONS)
    if fixed_size:
        height, width = image.shape[-2:]
        options["aot_inductor.metadata"] = {FIXED_SIZE_KEY: f"{height}x{width}"}
    # Inductor freezes only a graph compiled without autograd
    with torch.no_grad(), packed_for_example_size():
        torch._inductor.aoti_compile_and_package(
            export_program(module, image, fixed_size=fixed_size),
            package_path=path,
            inductor_configs=options,
        )


# format -> (file name, writer, how to load and run it)
FORMATS: Dict[str, Tuple[str, Callable, str]] = {
    "torchscript": (
        "model.ts",
        save_torchscript,
        "import d2ext, torch; model = torch.jit.load('{path}'); boxes, scores, classes = "
        "model(image)",
    ),
    "onnx": (
        "model.onnx",
        save_onnx,
        "import onnxruntime; session = onnxruntime.InferenceSession('{path}'); boxes, scores, "
        "classes = session.run(None, {{'image': image.numpy()}})",
    ),
    "exported-program": (
        "model.pt2",
        save_program,
        "import d2ext, torch; model = torch.export.load('{path}').module(); boxes, scores, "
        "classes = model(image)",
    ),
    "aoti": (
        "model_aoti.pt2",
        save_aoti,
        "import d2ext, torch; model = torch._inductor.aoti_load_package('{path}'); boxes, "
        "scores, classes = model(image)",
    ),
}


# A fixed-size package loads through load_artefact, which checks the image size: the
# package itself reads its inputs at the compiled size whatever their shape.
FIXED_SIZE_USAGE = (
    "import d2ext; from deformable_detr.export.artefacts import load_artefact; "
    "model = load_artefact('{path}', 'aoti'); boxes, scores, classes = model(image)"
)

EXPORT_PRECISIONS = PRECISIONS + ("int8",)
INT8_FORMATS = ("onnx", "aoti")


def check_precision(fmt: str, precision: str) -> None:
    """Raises ValueError, saying why, when format `fmt` cannot be exported at `precision`."""
    if precision not in EXPORT_PRECISIONS:
        raise ValueError(
            f"export precision {precision!r}; expected one of {', '.join(EXPORT_PRECISIONS)}"
        )
    if fmt == "onnx" and precision == "bf16":
        raise ValueError(
            "ONNX export at bf16: onnxruntime's CPU provider has no bfloat16 convolution, "
            "so the graph would not load; export ONNX in fp32 or int8, or use torchscript, "
            "exported-program or aoti for bf16"
        )
    if precision == "int8" and fmt not in INT8_FORMATS:
        raise ValueError(
            f"int8 export is for onnx (onnxruntime runs the quantized graph) and aoti "
            f"(Inductor compiles it to oneDNN's int8 kernels), not {fmt}; use --format onnx "
            "or aoti, or fp32/bf16 for the other formats"
        )


def _save_int8(
    module: nn.Module,
    image: torch.Tensor,
    fmt: str,
    path: str,
    calibration_images: Sequence[torch.Tensor],
    fixed_size: bool = False,
):
    """Writes the int8 artefact of `module` (float32) in `fmt` (one of INT8_FORMATS),
    calibrated on `calibration_images`, to `path`."""
    if fmt == "aoti":
        from .pt2e_int8 import quantize

        save_aoti(quantize(module, calibration_images), image, path, fixed_size)
        return
    from .quantization import quantize_onnx

    with tempfile.TemporaryDirectory() as scratch:
        float32_path = os.path.join(scratch, FORMATS["onnx"][0])
        save_onnx(module, image, float32_path)
        quantize_onnx(float32_path, path, calibration_images)


def export(
    model: SetPredictionDetector,
    image: torch.Tensor,
    fmt: str,
    output_dir: str,
    precision: Optional[str] = None,
    calibration_images: Sequence[torch.Tensor] = (),
    fixed_size: bool = False,
) -> Tuple[str, str]:
    """Exports `model` in format `fmt` (a key of FORMATS), traced on `image` (3, H, W),
    into output_dir, at `precision` (one of EXPORT_PRECISIONS; default the model's
    inference_precision, which this sets). "int8" (onnx and aoti) quantizes the float32
    graph, calibrated on `calibration_images` (each (3, H, W) as the artefact takes
    them, from the training set), into model_int8.onnx or model_int8_aoti.pt2.
    `fixed_size` (aoti only) compiles the package for `image`'s size only. Returns
    the artefact's path and a line of Python that loads and runs it on an `image` tensor."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    check_exportable(model)
    precision = precision or model.inference_precision
    check_precision(fmt, precision)
    if fixed_size and fmt != "aoti":
        raise ValueError(
            f"a fixed image size is for aoti packages, which Inductor compiles for that size; "
            f"{fmt} artefacts take any image size: export {fmt} without it, or use --format aoti"
        )
    if precision == "int8" and len(calibration_images) == 0:
        raise ValueError(
            "int8 export needs calibration images (a few of the training set); got none"
        )
    float_precision = "fp32" if precision == "int8" else precision
    if model.inference_precision != float_precision:
        set_inference_precision(model, float_precision)
    file_name, save, usage = FORMATS[fmt]
    if fixed_size:
        save = functools.partial(save_aoti, fixed_size=True)
        usage = FIXED_SIZE_USAGE
    if precision == "int8":
        path = os.path.join(output_dir, file_name.replace("model", "model_int8", 1))
        _save_int8(ImageToDetections(model), image, fmt, path, calibration_images, fixed_size)
        return path, usage.format(path=path)
    path = os.path.join(output_dir, file_name)
    save(ImageToDetections(model), image, path)
    return path, usage.format(path=path)


def artefact_format(path: str) -> str:
    """The format (a key of FORMATS) of an artefact by the ending of its name, as
    `export` names them: .ts, .onnx, .pt2 (exported-program) and _aoti.pt2."""
    endings = {fmt: file_name.replace("model", "", 1) for fmt, (file_name, _, _) in FORMATS.items()}
    for fmt, ending in sorted(endings.items(), key=lambda item: -len(item[1])):
        if path.endswith(ending):
            return fmt
    raise ValueError(
        f"cannot tell the format of artefact {path!r} by its name; expected a name ending "
        + ", ".join(f"{ending} ({fmt})" for fmt, ending in endings.items())
    )


def load_artefact(path: str, fmt: str) -> Callable:
    """An exported artefact as a function image (3, H, W) -> (boxes, scores, classes)
    tensors, in this process (ONNX through onnxruntime's CPU provider)."""
    if fmt == "torchscript":
        return torch.jit.load(path)
    if fmt == "exported-program":
        return torch.export.load(path).module()
    if fmt == "aoti":
        package = torch._inductor.aoti_load_package(path)
        size = fixed_image_size(package)
        return package if size is None else FixedSizePackage(package, size, path)
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return lambda image: [torch.from_numpy(x) for x in session.run(None, {"image": image.numpy()})]


def fixed_image_size(package) -> Optional[Tuple[int, int]]:
    """The (H, W) a loaded aoti package was compiled for, or None if it takes any size."""
    size = package.get_metadata().get(FIXED_SIZE_KEY)
    if size is None:
        return None
    height, width = size.split("x")
    return int(height), int(width)


class ImageSizeError(ValueError):
    """An image of another size than the one a fixed-size package was compiled for."""


class FixedSizePackage:
    """A fixed-size aoti package (a function image -> boxes, scores, classes) that
    raises ImageSizeError on images of another size."""

    def __init__(self, package, size: Tuple[int, int], path: str):
        self.package, self.size, self.path = package, size, path

    def __call__(self, image: torch.Tensor):
        if tuple(image.shape) != (3, *self.size):
            raise ImageSizeError(
                f"{self.path} was exported for images of {self.size[0]}x{self.size[1]} "
                f"(3, H, W) only, got {tuple(image.shape)}: resize to that size, or export "
                "the package without a fixed size to take any size"
            )
        return self.package(image)


class ArtefactDetector:
    """An exported artefact (a function image (3, H, W) -> boxes, scores, classes, as
    load_artefact returns) in the eager model's interface for inference: a list of the
    test mapper's dicts -> [{"instances": Instances}] in each image's original pixels
    ("height", "width"), as detectron2's inference_on_dataset and evaluators take it."""

    def __init__(self, artefact: Callable):
        self.artefact = artefact

    def __call__(self, batched_inputs: List[Dict]) -> List[Dict[str, Instances]]:
        processed = []
        for inputs in batched_inputs:
            image = inputs["image"].float()
            boxes, scores, classes = self.artefact(image)
            height, width = image.shape[-2:]
            result = Instances(
                (height, width), pred_boxes=Boxes(boxes), scores=scores, pred_classes=classes
            )
            original = inputs.get("height", height), inputs.get("width", width)
            processed.append({"instances": detector_postprocess(result, *original)})
        return processed

"""Deployment: the model as a function of one image tensor, exported with a
dynamic image size to TorchScript, ONNX (standard ops only), torch.export's
ExportedProgram and an AOTInductor package.

Every artefact takes one image (3, H, W) float32, 0-255 in the config's input
format (INPUT.FORMAT, or the test mapper's image_format: RGB for the configs
here), resized as the test mapper and DefaultPredictor resize it, H and W at
least MIN_SIZE. It returns ``boxes`` (K, 4) (x1, y1, x2, y2) in pixels of that
image, clipped to it, ``scores`` (K,) and ``classes`` (K,) int64, best first,
K = min(test_topk, num_queries * num_classes): the Instances the eager model
returns for that image, except that the empty boxes detector_postprocess drops
are kept (a fixed K keeps the graph free of data-dependent shapes).
"""

import os
from typing import Callable, Dict, Sequence, Tuple

import torch
from torch import nn

from .build import build_model, input_format, load_config
from .meta_arch import DeformableDETR
from .precision import full_precision, inference_autocast
from .transformer import sizes_as_tensor

__all__ = [
    "FORMATS",
    "ImageToDetections",
    "dynamic_image_shapes",
    "export",
    "load_artefact",
    "load_model",
]

MIN_SIZE = (
    65  # a stride-64 level then has 2 pixels a side or more (a side of 1 specializes its strides)
)


class ImageToDetections(nn.Module):
    """DeformableDETR's inference on one unpadded image, in tensors only."""

    def __init__(self, model: DeformableDETR):
        super().__init__()
        self.model = model.eval()

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


def dynamic_image_shapes():
    """torch.export's dynamic_shapes for ImageToDetections: height and width free."""
    height = torch.export.Dim("height", min=MIN_SIZE)
    width = torch.export.Dim("width", min=MIN_SIZE)
    return {"image": {1: height, 2: width}}


def export_program(module: nn.Module, image: torch.Tensor) -> torch.export.ExportedProgram:
    with torch.no_grad():
        return torch.export.export(module, (image,), dynamic_shapes=dynamic_image_shapes())


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


def save_aoti(module: nn.Module, image: torch.Tensor, path: str):
    torch._inductor.aoti_compile_and_package(export_program(module, image), package_path=path)


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


def export(
    model: DeformableDETR, image: torch.Tensor, fmt: str, output_dir: str
) -> Tuple[str, str]:
    """Exports `model` in format `fmt` (a key of FORMATS), traced on `image` (3, H, W),
    into output_dir. Returns the artefact's path and a line of Python that loads and runs it
    on an `image` tensor."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if fmt == "onnx" and model.inference_precision != "fp32":
        raise ValueError(
            f"ONNX export at inference_precision={model.inference_precision}: onnxruntime's "
            "CPU provider has no bfloat16 convolution, so the graph would not load; export "
            "ONNX in fp32, or use torchscript, exported-program or aoti for bf16"
        )
    file_name, save, usage = FORMATS[fmt]
    path = os.path.join(output_dir, file_name)
    save(ImageToDetections(model), image, path)
    return path, usage.format(path=path)


def load_artefact(path: str, fmt: str) -> Callable:
    """An exported artefact as a function image (3, H, W) -> (boxes, scores, classes)
    tensors, in this process (ONNX through onnxruntime's CPU provider)."""
    if fmt == "torchscript":
        return torch.jit.load(path)
    if fmt == "exported-program":
        return torch.export.load(path).module()
    if fmt == "aoti":
        return torch._inductor.aoti_load_package(path)
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return lambda image: [torch.from_numpy(x) for x in session.run(None, {"image": image.numpy()})]


def load_model(config_file: str, opts: Sequence[str] = ()) -> Tuple[DeformableDETR, str]:
    """The model of a LazyConfig .py (overrides key=value, weights train.init_checkpoint)
    or yacs .yaml (overrides KEY VALUE or KEY=VALUE, weights MODEL.WEIGHTS) file, on the
    CPU in eval mode with its weights loaded strictly (deformable_detr.build), and its
    input format ("RGB" or "BGR").

    Raises:
        UnreadableCheckpointError naming the checkpoint when it does not load, or not fully.
    """
    cfg = load_config(config_file, opts)
    return build_model(cfg, device="cpu"), input_format(cfg)

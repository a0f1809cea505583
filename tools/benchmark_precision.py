#!/usr/bin/env python
"""AP and time of a trained model's inference at each precision, on its config's
test set: the eager model in float32 and in bfloat16; its ONNX export on onnxruntime
in float32 and int8 (calibrated on the first --calibration-images training images,
never on the test set); its int8 AOTInductor package (PyTorch's PT2E quantization,
deformable_detr.export.pt2e_int8, calibrated on the same images). Each reduced
precision runs with its switch's kept layers in float32 ("kept layers in fp32":
deformable_detr.export.precision.FLOAT32_MODULES, the reference points and box heads,
for bf16 and aoti int8; ONNX_INT8_FLOAT32_MODULES, those and the sampling offsets and
attention weights, for ONNX int8), with the other list, and everywhere reduced. The
rows other than the switches' are what the kept lists are measured against.

    python tools/benchmark_precision.py \\
        --config-file configs/synthetic/deformable_detr_tiny_multiscale.py \\
        train.init_checkpoint=output/synthetic_tiny_multiscale/model_final.pth

Prints a markdown table: AP, AP50, AP75, seconds for the test set, the time against
the eager float32 model, and, over the first --compare-images images' 10 best
float32 detections, how many keep their class at their rank and how many have a
detection of their class among the path's 10 best with IoU >= 0.9.
"""

# deformable_detr first: it imports detectron2 with its import-time warnings silenced
import deformable_detr  # noqa: F401

# isort: split
import argparse
import os
import tempfile
import time

import torch
from detectron2.config import instantiate
from detectron2.evaluation import inference_on_dataset

from deformable_detr.config.build import build_model, load_config
from deformable_detr.export.artefacts import (
    FORMATS,
    ArtefactDetector,
    ImageToDetections,
    export,
    load_artefact,
    save_aoti,
)
from deformable_detr.export.precision import (
    FLOAT32_MODULES,
    ONNX_INT8_FLOAT32_MODULES,
    detection_agreement,
    set_inference_precision,
)
from deformable_detr.export.pt2e_int8 import quantize
from deformable_detr.export.quantization import calibration_images, quantize_onnx

# (row name, path, precision, layers kept in float32)
SETTINGS = (
    ("fp32", "eager", "fp32", ()),
    ("bf16 (kept layers in fp32)", "eager", "bf16", FLOAT32_MODULES),
    ("bf16 (sampling layers in fp32 too)", "eager", "bf16", ONNX_INT8_FLOAT32_MODULES),
    ("bf16 everywhere", "eager", "bf16", ()),
    ("ONNX fp32", "onnx", "fp32", ()),
    ("ONNX int8 (kept layers in fp32)", "onnx", "int8", ONNX_INT8_FLOAT32_MODULES),
    ("ONNX int8 (sampling layers in int8)", "onnx", "int8", FLOAT32_MODULES),
    ("ONNX int8 everywhere", "onnx", "int8", ()),
    ("aoti int8 (kept layers in fp32)", "aoti", "int8", FLOAT32_MODULES),
    ("aoti int8 (sampling layers in fp32 too)", "aoti", "int8", ONNX_INT8_FLOAT32_MODULES),
    ("aoti int8 everywhere", "aoti", "int8", ()),
)
BOX_IOU = 0.9


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, help="LazyConfig .py file")
    parser.add_argument("--compare-images", type=int, default=20)
    parser.add_argument(
        "--calibration-images", type=int, default=16, help="int8: training images to calibrate on"
    )
    parser.add_argument(
        "--row",
        action="append",
        choices=[s[0] for s in SETTINGS],
        help="a row to measure, once per row (--row fp32 --row 'ONNX fp32'); default: every row",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="key=value config overrides")
    return parser.parse_args(argv)


def build_path(cfg, path, precision, kept, workdir, calibration):
    """The model of one setting, as a callable on the test loader's batches."""
    if path == "eager":
        return set_inference_precision(build_model(cfg, device="cpu"), precision, kept)
    if path == "aoti":
        package = f"{workdir}/model_int8_{len(kept)}_aoti.pt2"
        module = ImageToDetections(build_model(cfg, device="cpu"))
        save_aoti(quantize(module, calibration, kept), calibration[0], package)
        return ArtefactDetector(load_artefact(package, "aoti"))
    float32_path = os.path.join(workdir, FORMATS["onnx"][0])  # the ONNX rows share one export
    if not os.path.exists(float32_path):
        export(build_model(cfg, device="cpu"), calibration[0], "onnx", workdir, "fp32")
    onnx_path = float32_path
    if precision == "int8":
        onnx_path = f"{workdir}/model_int8_{len(kept)}.onnx"
        quantize_onnx(float32_path, onnx_path, calibration, kept)
    return ArtefactDetector(load_artefact(onnx_path, "onnx"))


def top_detections(model, sample, k=10):
    with torch.no_grad():
        return [model(batch)[0]["instances"][:k] for batch in sample]


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args.config_file, args.opts, lazy_only=True)
    loader = instantiate(cfg.dataloader.test)
    sample = [batch for _, batch in zip(range(args.compare_images), loader)]
    calibration = calibration_images(cfg, args.calibration_images)
    settings = [s for s in SETTINGS if not args.row or s[0] in args.row]
    rows, reference, reference_seconds = [], None, None
    with tempfile.TemporaryDirectory() as workdir:
        for name, path, precision, kept in settings:
            model = build_path(cfg, path, precision, kept, workdir, calibration)
            start = time.perf_counter()
            result = inference_on_dataset(model, loader, instantiate(cfg.dataloader.evaluator))
            seconds = time.perf_counter() - start
            detections = top_detections(model, sample)
            reference = reference or detections
            reference_seconds = reference_seconds or seconds
            same_class, same_box, total = detection_agreement(detections, reference, BOX_IOU)
            ap = result["bbox"]
            rows.append(
                f"| {name} | {ap['AP']:.2f} | {ap['AP50']:.2f} | {ap['AP75']:.2f} "
                f"| {seconds:.1f} | {seconds / reference_seconds:.2f}x "
                f"| {same_class}/{total} | {same_box}/{total} |"
            )
    print(f"CPU capability: {torch.backends.cpu.get_cpu_capability()}")
    print(
        f"| precision | AP | AP50 | AP75 | s (test set) | time vs {settings[0][0]} "
        f"| top-10 classes as {settings[0][0]} | top-10 boxes at IoU >= {BOX_IOU} |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Exports a trained Deformable DETR to TorchScript, ONNX, torch.export's
ExportedProgram or an AOTInductor package, for any image size.

    python tools/deploy/export_model.py \\
        --config-file configs/synthetic/deformable_detr_tiny.py --format onnx --output exported/ \\
        train.init_checkpoint=output/synthetic_tiny/model_final.pth
    python tools/deploy/export_model.py \\
        --config-file configs/COCO/deformable_detr_r50_50ep.yaml --format aoti --output exported/ \\
        --sample-image image.jpg MODEL.WEIGHTS=model_final.pth

--precision bf16 exports bfloat16 inference (deformable_detr.export.precision) for
torchscript, exported-program and aoti; --precision int8 exports int8 convolutions and
linear layers, calibrated on the first --calibration-images images of the config's
training set (never its test set, which the AP is measured on): with --format aoti
through PyTorch's PT2E quantization, run by Inductor's int8 kernels
(deformable_detr.export.pt2e_int8), with --format onnx for onnxruntime
(deformable_detr.export.quantization). The artefact takes
one image (3, H, W) float32 in the config's input format,
resized as for DefaultPredictor, and returns boxes (K, 4) (x1, y1, x2, y2 in
its pixels), scores (K,) and classes (K,) (see deformable_detr.export.artefacts). The
sample image (--sample-image, else a generated one) only drives the tracing, except
with --fixed-size (aoti), where the package is compiled for its size and takes images
of that size only.
"""

import argparse
import os
import sys

import numpy as np
import torch

from deformable_detr.checkpoint.checkpointer import UnreadableCheckpointError
from deformable_detr.config.build import build_model, input_format, load_config
from deformable_detr.export.artefacts import (
    EXPORT_PRECISIONS,
    FORMATS,
    MIN_SIZE,
    check_exportable,
    check_precision,
    export,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, help="LazyConfig .py or yacs .yaml")
    parser.add_argument("--format", required=True, choices=list(FORMATS))
    parser.add_argument("--output", required=True, help="directory to write the artefact to")
    parser.add_argument(
        "--sample-image", help="image to trace with; default: a generated 480x640 one"
    )
    parser.add_argument(
        "--precision",
        choices=EXPORT_PRECISIONS,
        help="inference precision of the artefact (default: the config's "
        "model.inference_precision); bf16 pays on GPUs and CPUs with AVX512-BF16 or AMX; "
        "int8: aoti or onnx (docs/benchmarks.md: which on which CPU)",
    )
    parser.add_argument(
        "--calibration-images",
        type=int,
        default=16,
        help="int8: how many of the training set's first images calibrate the activation "
        "ranges (never the test set's)",
    )
    parser.add_argument(
        "--fixed-size",
        action="store_true",
        help="aoti: compile the package for the size of --sample-image only (the size the "
        "package will be given, after resizing); it refuses other sizes, and runs faster "
        "on CPUs (docs/benchmarks.md)",
    )
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        help="config overrides: key=value for .py, KEY VALUE pairs or KEY=VALUE for .yaml",
    )
    return parser.parse_args(argv)


def sample_image(path, input_format: str) -> torch.Tensor:
    """(3, H, W) float32 of the image at `path` in input_format, or a generated one."""
    if path is None:
        return torch.randint(
            0, 256, (3, 480, 640), generator=torch.Generator().manual_seed(0)
        ).float()
    from detectron2.data.detection_utils import read_image

    image = torch.from_numpy(
        np.ascontiguousarray(read_image(path, format=input_format).transpose(2, 0, 1))
    )
    if min(image.shape[1:]) < MIN_SIZE:
        raise ValueError(
            f"sample image {path} is {tuple(image.shape[1:])}; "
            f"it needs {MIN_SIZE} pixels a side or more"
        )
    return image.float()


def writable_directory(path: str) -> str:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise ValueError(f"output directory {path!r} cannot be created: {e.strerror}") from e
    if not os.access(path, os.W_OK):
        raise ValueError(f"output directory {path!r} is not writable")
    return path


def main(argv=None):
    args = parse_args(argv)
    if args.fixed_size and args.sample_image is None:
        sys.exit(
            "export_model: --fixed-size compiles the package for the size of --sample-image "
            "only; give --sample-image an image of the size the package will be given"
        )
    try:
        output = writable_directory(args.output)
        cfg = load_config(args.config_file, args.opts)
        model = build_model(cfg, device="cpu")  # weights loaded strictly
        check_exportable(model)
        check_precision(args.format, args.precision or model.inference_precision)
        calibration = []
        if args.precision == "int8":
            from deformable_detr.export.quantization import calibration_images

            calibration = calibration_images(cfg, args.calibration_images)
        image = sample_image(args.sample_image, input_format(cfg))
        path, usage = export(
            model, image, args.format, output, args.precision, calibration, args.fixed_size
        )
    except (ValueError, OSError, UnreadableCheckpointError) as e:
        sys.exit(f"export_model: {e}")
    print(f"wrote {path}")
    height, width = image.shape[-2:]
    size = f"H x W = {height} x {width} only" if args.fixed_size else f"H and W >= {MIN_SIZE}"
    print(
        f"input: image (3, H, W) float32 0-255, {input_format(cfg)}, {size}; "
        "outputs: boxes (K, 4) x1y1x2y2 pixels, scores (K,), classes (K,)"
    )
    print(f"load and run: {usage}")


if __name__ == "__main__":
    main()

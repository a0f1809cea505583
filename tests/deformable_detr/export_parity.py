"""Exports tiny models in one format and compares the artefacts' detections with
the eager model's at image sizes other than the export size. Run in a fresh
process by test_export.py (a warm compile cache would hide first-use failures):

    python -m tests.deformable_detr.export_parity FORMAT VARIANT [VARIANT ...] \
        [--int8] [--fixed-size] [--encoder-ffn-row-blocks=N]

FORMAT is an export format or "compile" (compile_inference, the deployment
benchmark's torch.compile path, with the aoti package's Inductor options). --int8
quantizes the model (onnx, aoti and compile), calibrated on generated images, after
giving its box heads random last layers: their zero initialization would make every
box a reference point, the same for any image and any precision. --fixed-size (aoti)
exports the package for the export size only, compares there, and records what
loading it answers to another size. --encoder-ffn-row-blocks=N builds the models with
their encoder FFN's rows in N blocks at inference (the eager reference too).

Prints one JSON line: {variant: [{"size", "count", "eager_count", "classes_equal",
"boxes", "scores", "box_errors"}, ...]}, with the largest absolute box and score
differences, and for each eager detection, best first, the distance in pixels (largest
coordinate difference) to the nearest artefact detection of its class; with
--fixed-size, a last entry {"size", "refused"}: the error's message at another size.
"""

import json
import sys
import tempfile

import torch
from torch import nn

from deformable_detr.export.artefacts import (
    ImageToDetections,
    compile_inference,
    export,
    load_artefact,
)
from deformable_detr.export.pt2e_int8 import quantize

from .tiny_model import build_model

EXPORT_SIZE = (96, 128)
RUN_SIZES = [(75, 100), (160, 230)]  # neither is the export size nor a multiple of 32


def compare(model, artefact, size, generator):
    image = torch.rand((3, *size), generator=generator) * 255
    with torch.no_grad():
        eager = model([{"image": image}])[0]["instances"]
        boxes, scores, classes = artefact(image)
    # detector_postprocess drops empty boxes; the artefacts keep a fixed top-k
    kept = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, scores, classes = boxes[kept], scores[kept], classes[kept]
    same_count = len(boxes) == len(eager)
    distances = (eager.pred_boxes.tensor[:, None] - boxes[None]).abs().amax(dim=-1)
    distances[eager.pred_classes[:, None] != classes[None]] = float("inf")
    return {
        "size": list(size),
        "count": len(boxes),
        "eager_count": len(eager),
        "classes_equal": same_count and bool((classes == eager.pred_classes).all()),
        "boxes": (boxes - eager.pred_boxes.tensor).abs().max().item() if same_count else None,
        "scores": (scores - eager.scores).abs().max().item() if same_count else None,
        "box_errors": distances.amin(dim=1).tolist() if len(boxes) else [],
    }


def int8_ready(model, generator):
    """Gives `model`'s box heads random last layers; returns calibration images."""
    for head in model.bbox_embed:
        nn.init.normal_(head.layers[-1].weight, std=0.05)
    return [torch.rand((3, *EXPORT_SIZE), generator=generator) * 255 for _ in range(4)]


def refusal(artefact, size, generator):
    """The message of the ValueError `artefact` raises on an image of `size`, or None."""
    try:
        artefact(torch.rand((3, *size), generator=generator) * 255)
    except ValueError as e:
        return str(e)
    return None


def main(fmt, variants, int8=False, fixed_size=False, encoder_ffn_row_blocks=1):
    results = {}
    generator = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as workdir:
        for variant in variants:
            torch.manual_seed(0)
            model = build_model(variant, encoder_ffn_row_blocks=encoder_ffn_row_blocks).eval()
            sample = torch.rand((3, *EXPORT_SIZE), generator=generator) * 255
            calibration = int8_ready(model, generator) if int8 else []
            if fmt == "compile":
                module = ImageToDetections(model)
                artefact = compile_inference(quantize(module, calibration) if int8 else module)
            else:
                precision = "int8" if int8 else None
                path, _ = export(model, sample, fmt, workdir, precision, calibration, fixed_size)
                artefact = load_artefact(path, fmt)
            if fixed_size:
                runs = [compare(model, artefact, EXPORT_SIZE, generator)]
                other = RUN_SIZES[0]
                runs.append({"size": list(other), "refused": refusal(artefact, other, generator)})
            else:
                runs = [compare(model, artefact, size, generator) for size in RUN_SIZES]
            results[variant] = runs
    print(json.dumps(results))


ROW_BLOCKS_OPTION = "--encoder-ffn-row-blocks="

if __name__ == "__main__":
    arguments = sys.argv[2:]
    row_blocks = [
        int(a[len(ROW_BLOCKS_OPTION) :]) for a in arguments if a.startswith(ROW_BLOCKS_OPTION)
    ]
    main(
        sys.argv[1],
        [a for a in arguments if not a.startswith("--")],
        int8="--int8" in arguments,
        fixed_size="--fixed-size" in arguments,
        encoder_ffn_row_blocks=row_blocks[-1] if row_blocks else 1,
    )

"""Exports tiny models in one format and compares the artefacts' detections with
the eager model's at image sizes other than the export size. Run in a fresh
process by test_export.py (a warm compile cache would hide first-use failures):

    python -m tests.deformable_detr.export_parity FORMAT VARIANT [VARIANT ...]

FORMAT is an export format or "compile" (compile_inference, the deployment
benchmark's torch.compile path, with the aoti package's Inductor options).

Prints one JSON line: {variant: [{"size", "count", "eager_count", "classes_equal",
"boxes", "scores"}, ...]}, with the largest absolute box and score differences.
"""

import json
import sys
import tempfile

import torch

from deformable_detr.export.artefacts import (
    ImageToDetections,
    compile_inference,
    export,
    load_artefact,
)

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
    return {
        "size": list(size),
        "count": len(boxes),
        "eager_count": len(eager),
        "classes_equal": same_count and bool((classes == eager.pred_classes).all()),
        "boxes": (boxes - eager.pred_boxes.tensor).abs().max().item() if same_count else None,
        "scores": (scores - eager.scores).abs().max().item() if same_count else None,
    }


def main(fmt, variants):
    results = {}
    generator = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as workdir:
        for variant in variants:
            torch.manual_seed(0)
            model = build_model(variant).eval()
            sample = torch.rand((3, *EXPORT_SIZE), generator=generator) * 255
            if fmt == "compile":
                artefact = compile_inference(ImageToDetections(model))
            else:
                path, _ = export(model, sample, fmt, workdir)
                artefact = load_artefact(path, fmt)
            results[variant] = [compare(model, artefact, size, generator) for size in RUN_SIZES]
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])

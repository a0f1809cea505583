"""Exports the shrunk models of backbone configs in one format and compares the
artefacts' detections with the eager model's at the export size and at other
sizes. Run in a fresh process by test_backbones.py:

    python -m tests.deformable_detr.backbone_export_parity FORMAT BACKBONE [BACKBONE ...]

Prints one JSON line: {backbone: {"export_error": message or None, "runs": [the
comparison of export_parity.compare, or {"size", "error"}, per size]}}, sizes
EXPORT_SIZE then RUN_SIZES.
"""

import json
import sys
import tempfile

import torch

from deformable_detr.export.artefacts import export, load_artefact

from .backbone_configs import shrunk_model
from .export_parity import EXPORT_SIZE, RUN_SIZES, compare


def _error(error: Exception) -> str:
    return f"{type(error).__name__}: {str(error)[-1500:]}"


def main(fmt, backbones):
    results = {}
    generator = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as workdir:
        for backbone in backbones:
            torch.manual_seed(0)
            model = shrunk_model(backbone)[0].eval()
            sample = torch.rand((3, *EXPORT_SIZE), generator=generator) * 255
            results[backbone] = {"export_error": None, "runs": []}
            try:
                path, _ = export(model, sample, fmt, workdir)
                artefact = load_artefact(path, fmt)
            except Exception as error:  # reported, and asserted on, by the test
                results[backbone]["export_error"] = _error(error)
                continue
            for size in [EXPORT_SIZE, *RUN_SIZES]:
                try:
                    run = compare(model, artefact, size, generator)
                except Exception as error:
                    run = {"size": list(size), "error": _error(error)}
                results[backbone]["runs"].append(run)
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])

"""Exports the shrunk models of backbone configs in one format and compares the
artefacts' detections with the eager model's at image sizes other than the
export size. Run in a fresh process by test_backbones.py:

    python -m tests.deformable_detr.backbone_export_parity FORMAT BACKBONE [BACKBONE ...]

Prints one JSON line: {backbone: [comparison of export_parity.compare, ...]}, or
{backbone: {"error": message}} for one that does not export.
"""

import json
import sys
import tempfile

import torch

from deformable_detr.export import export, load_artefact

from .backbone_configs import shrunk_model
from .export_parity import EXPORT_SIZE, RUN_SIZES, compare


def main(fmt, backbones):
    results = {}
    generator = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as workdir:
        for backbone in backbones:
            torch.manual_seed(0)
            model = shrunk_model(backbone)[0].eval()
            sample = torch.rand((3, *EXPORT_SIZE), generator=generator) * 255
            try:
                path, _ = export(model, sample, fmt, workdir)
                artefact = load_artefact(path, fmt)
            except Exception as error:  # reported, and asserted on, by the test
                results[backbone] = {"error": f"{type(error).__name__}: {error}"[:2000]}
                continue
            results[backbone] = [compare(model, artefact, size, generator) for size in RUN_SIZES]
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])

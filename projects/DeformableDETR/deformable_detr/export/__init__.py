"""Deployment: export formats (TorchScript, ONNX, ExportedProgram, AOTInductor),
inference precision (bf16), int8 quantization and the FLOP rules of the MSDA op."""

import importlib


def __getattr__(name):
    # the names of the former deformable_detr.export module; imported on use, since
    # artefacts imports the model, which imports .precision
    artefacts = importlib.import_module(".artefacts", __name__)
    if name in artefacts.__all__:
        return getattr(artefacts, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

#!/usr/bin/env python
"""Convert the weights of a HF transformers DeformableDetrForObjectDetection into
a detectron2 checkpoint of this project's model.

    PYTHONPATH=projects/DeformableDETR:. python tools/convert_hf_checkpoint.py \\
        --config-file configs/COCO/deformable_detr_r50_50ep.py path/to/hf_model_dir model_hf.pth

The input is a directory written by save_pretrained (config.json with
model.safetensors or pytorch_model.bin) or one such weights file. The backbone
may be transformers' own ResNet or timm's (the hub's checkpoints use timm's);
both are renamed into detectron2's ResNet. With config.json beside the weights,
box refinement and the decoder depth are read from it; without it they are
inferred from the weights. HF ties every class head (and, without box
refinement, every box head) to head 0 and saves one copy: those heads are
filled from head 0, which is what HF computes with. The variant, class and key
checks are those of tools/convert_official_checkpoint.py.
"""
import argparse
import json
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
from convert_official_checkpoint import add_common_arguments, build_model, finish  # noqa: E402

from deformable_detr.checkpoint import UnreadableCheckpointError, load_weights_file  # noqa: E402
from deformable_detr.conversion import convert_hf_state_dict  # noqa: E402

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
OFFICIAL_HINT = "; convert official Deformable-DETR checkpoints with tools/convert_official_checkpoint.py"


def load_hf(path: str):
    """(state_dict, config dict or None) of a save_pretrained directory or a weights file."""
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in WEIGHT_FILES if (path / name).is_file()]
        if not found:
            raise ValueError(f"{path}: no {' or '.join(WEIGHT_FILES)} in this directory (sharded checkpoints are not supported)")
        weights, config_file = found[0], path / "config.json"
    else:
        weights, config_file = path, path.parent / "config.json"
    try:
        state_dict = load_weights_file(str(weights))
    except UnreadableCheckpointError as e:
        raise ValueError(f"{e}{OFFICIAL_HINT if 'argparse.Namespace' in str(e) else ''}") from None
    if "model" in state_dict and "args" in state_dict:
        raise ValueError(f"{weights}: this is a checkpoint of the official Deformable-DETR release, not HF{OFFICIAL_HINT}")
    config = json.loads(config_file.read_text()) if config_file.is_file() else None
    if config is not None and config.get("model_type") != "deformable_detr":
        raise ValueError(f"{config_file}: model_type is {config.get('model_type')!r}, not 'deformable_detr'")
    return state_dict, config


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    model = build_model(args.config_file, args.opts)
    state_dict, config = load_hf(args.input)
    hints = {}
    if config is not None:
        hints = {"with_box_refine": bool(config.get("with_box_refine")), "num_decoder_layers": config.get("decoder_layers")}
    finish(model, convert_hf_state_dict(state_dict, **hints), args)


if __name__ == "__main__":
    try:
        main()
    except ValueError as e:
        sys.exit(f"error: {e}")

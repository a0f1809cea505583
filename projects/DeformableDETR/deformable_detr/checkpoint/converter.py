"""What the two conversion tools share: read a checkpoint of the official
release or of HF transformers, build the model of a config, map the class rows,
load strictly, report and save (tools/convert_official_checkpoint.py and
tools/convert_hf_checkpoint.py are thin command lines over `main`)."""

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import torch

from ..config.build import build_model, load_config
from .checkpointer import UnreadableCheckpointError, load_weights_file
from .loading_rule import CLASS_NAMES_KEY
from .state_dicts import (
    Conversion,
    coco_class_names,
    coco_raw_class_ids,
    convert_hf_state_dict,
    convert_official_state_dict,
    load_conversion,
)

__all__ = [
    "class_rows",
    "load_official",
    "load_hf",
    "read_official",
    "read_hf",
    "main",
]

COCO_HEAD_ROWS = 91
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
OFFICIAL_HINT = (
    "; convert official Deformable-DETR checkpoints with tools/convert_official_checkpoint.py"
)


def class_rows(choice: str, checkpoint_classes: int, model_classes: int) -> Optional[List[int]]:
    """The checkpoint's class-head rows for each model class, or None to keep them.

    choice: "coco" maps the 91-row COCO heads to detectron2's 80 contiguous ids;
    "none" keeps the heads; "auto" is "coco" for a 91-row checkpoint and an
    80-class model, else "none".
    """
    coco = coco_raw_class_ids()
    if choice == "auto":
        choice = (
            "coco" if (checkpoint_classes, model_classes) == (COCO_HEAD_ROWS, len(coco)) else "none"
        )
    if choice == "none":
        return None
    if checkpoint_classes != COCO_HEAD_ROWS:
        raise ValueError(
            "--class-map coco needs the 91-row COCO class heads; the checkpoint has "
            f"{checkpoint_classes}"
        )
    return coco


def load_official(path: str) -> dict:
    """The state_dict of an official checkpoint file (or a bare state_dict)."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = load_weights_file(path)
    except UnreadableCheckpointError as e:
        raise ValueError(str(e)) from None
    state_dict = checkpoint.get("model", checkpoint)
    if not isinstance(state_dict, dict) or not all(
        isinstance(v, torch.Tensor) for v in state_dict.values()
    ):
        raise ValueError(
            f"{path}: expected the official checkpoint, a dict whose 'model' is a state_dict"
        )
    return state_dict


def load_hf(path: str) -> Tuple[dict, Optional[dict]]:
    """(state_dict, config dict or None) of a save_pretrained directory or a weights file."""
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in HF_WEIGHT_FILES if (path / name).is_file()]
        if not found:
            raise ValueError(
                f"{path}: no {' or '.join(HF_WEIGHT_FILES)} in this directory (sharded checkpoints "
                "are not supported)"
            )
        weights, config_file = found[0], path / "config.json"
    else:
        weights, config_file = path, path.parent / "config.json"
    try:
        state_dict = load_weights_file(str(weights))
    except UnreadableCheckpointError as e:
        raise ValueError(f"{e}{OFFICIAL_HINT if 'argparse.Namespace' in str(e) else ''}") from None
    if "model" in state_dict and "args" in state_dict:
        raise ValueError(
            f"{weights}: this is a checkpoint of the official Deformable-DETR release, not "
            f"HF{OFFICIAL_HINT}"
        )
    config = json.loads(config_file.read_text()) if config_file.is_file() else None
    if config is not None and config.get("model_type") != "deformable_detr":
        raise ValueError(
            f"{config_file}: model_type is {config.get('model_type')!r}, not 'deformable_detr'"
        )
    return state_dict, config


def read_official(path: str) -> Conversion:
    """The conversion of an official checkpoint file."""
    return convert_official_state_dict(load_official(path))


def read_hf(path: str) -> Conversion:
    """The conversion of HF weights; box refinement and the decoder depth come
    from config.json when it is beside them, else from the weights."""
    state_dict, config = load_hf(path)
    hints = {}
    if config is not None:
        hints = {
            "with_box_refine": bool(config.get("with_box_refine")),
            "num_decoder_layers": config.get("decoder_layers"),
        }
    return convert_hf_state_dict(state_dict, **hints)


def _argument_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config-file", required=True, help="the model's LazyConfig (.py) or yacs (.yaml) config"
    )
    parser.add_argument("input")
    parser.add_argument("output", help="detectron2 checkpoint to write (.pth)")
    parser.add_argument(
        "--class-map",
        choices=["auto", "coco", "none"],
        default="auto",
        help="coco: 91 raw COCO ids -> detectron2's 80 contiguous ids; "
        "auto: coco when the checkpoint has 91 classes and the model 80 (default)",
    )
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="config overrides (key=value, or KEY VALUE for yacs)"
    )
    return parser


def convert(read: Callable[[str], Conversion], args: argparse.Namespace) -> None:
    """Build the config's model, read the input, map the classes, load strictly
    (errors name what does not fit), report, write."""
    model = build_model(load_config(args.config_file, args.opts), weights=None, device="cpu")
    conversion = read(args.input)
    rows = class_rows(args.class_map, conversion.num_classes, model.num_classes)
    if rows is not None:
        conversion.select_classes(rows)
    load_conversion(model, conversion)
    print(conversion.summary())
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    checkpoint = {"model": conversion.state_dict, "__source__": args.input}
    if rows is not None:  # the heads now hold detectron2's COCO classes, in its order
        checkpoint[CLASS_NAMES_KEY] = coco_class_names()
    torch.save(checkpoint, args.output)
    print(
        f"wrote {args.output}; use it as train.init_checkpoint (LazyConfig) or MODEL.WEIGHTS "
        f"(yacs) with {args.config_file}"
    )


def main(
    read: Callable[[str], Conversion], description: str, argv: Optional[List[str]] = None
) -> None:
    """The command line of a conversion tool that reads its input with `read`;
    a ValueError (bad input, a checkpoint of another variant) exits with its message."""
    args = _argument_parser(description).parse_args(argv)
    try:
        convert(read, args)
    except ValueError as e:
        sys.exit(f"error: {e}")

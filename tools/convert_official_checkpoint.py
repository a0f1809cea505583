#!/usr/bin/env python
"""Convert a checkpoint of the official Deformable-DETR release into a detectron2
checkpoint of this project's model.

    PYTHONPATH=projects/DeformableDETR:. python tools/convert_official_checkpoint.py \\
        --config-file configs/COCO/deformable_detr_r50_box_refine_50ep.py \\
        r50_deformable_detr_plus_iterative_bbox_refinement-checkpoint.pth model_box_refine.pth
    # then, e.g.
    python tools/lazyconfig_train_net.py --config-file configs/COCO/deformable_detr_r50_box_refine_50ep.py \\
        --eval-only train.init_checkpoint=model_box_refine.pth

The input is the official `.pth` (a dict whose "model" is the state_dict; its
"args", an argparse.Namespace, is allowed through torch.load's weights_only
unpickler). The config decides the variant: a checkpoint of another variant
(levels, box refinement, two-stage) is refused, naming both. The official COCO
heads have 91 rows indexed by raw COCO category id; with an 80-class config
they are mapped to detectron2's contiguous ids (--class-map auto, the default).
Every source key is accounted for: converted, a repeat of a shared head, or
listed as unused; a model key the checkpoint cannot fill is an error.
"""
import argparse
import sys
from pathlib import Path
from typing import List, Optional

import torch

from deformable_detr.checkpoint import UnreadableCheckpointError, load_weights_file
from deformable_detr.conversion import Conversion, coco_raw_class_ids, convert_official_state_dict, load_conversion

COCO_HEAD_ROWS = 91


def build_model(config_file: str, opts: List[str]) -> torch.nn.Module:
    """The model of a LazyConfig (.py) or yacs (.yaml) config, on the CPU."""
    if config_file.endswith(".py"):
        from detectron2.config import LazyConfig, instantiate

        cfg = LazyConfig.apply_overrides(LazyConfig.load(config_file), opts)
        return instantiate(cfg.model)
    from detectron2.modeling import build_model as build_yacs_model

    from deformable_detr import load_yacs_config

    cfg = load_yacs_config(config_file, opts)
    cfg.MODEL.DEVICE = "cpu"
    return build_yacs_model(cfg)


def class_rows(choice: str, checkpoint_classes: int, model_classes: int) -> Optional[List[int]]:
    """The checkpoint's class-head rows for each model class, or None to keep them.

    choice: "coco" maps the 91-row COCO heads to detectron2's 80 contiguous ids;
    "none" keeps the heads; "auto" is "coco" for a 91-row checkpoint and an
    80-class model, else "none".
    """
    coco = coco_raw_class_ids()
    if choice == "auto":
        choice = "coco" if (checkpoint_classes, model_classes) == (COCO_HEAD_ROWS, len(coco)) else "none"
    if choice == "none":
        return None
    if checkpoint_classes != COCO_HEAD_ROWS:
        raise ValueError(f"--class-map coco needs the 91-row COCO class heads; the checkpoint has {checkpoint_classes}")
    return coco


def add_common_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("--config-file", required=True, help="the model's LazyConfig (.py) or yacs (.yaml) config")
    parser.add_argument("input")
    parser.add_argument("output", help="detectron2 checkpoint to write (.pth)")
    parser.add_argument(
        "--class-map",
        choices=["auto", "coco", "none"],
        default="auto",
        help="coco: 91 raw COCO ids -> detectron2's 80 contiguous ids; auto: coco when the checkpoint has 91 "
        "classes and the model 80 (default)",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides (key=value, or KEY VALUE for yacs)")


def finish(model: torch.nn.Module, conversion: Conversion, args) -> None:
    """Map the classes, load strictly into the model (errors name what does not
    fit), report, write."""
    rows = class_rows(args.class_map, conversion.num_classes, model.num_classes)
    if rows is not None:
        conversion.select_classes(rows)
    load_conversion(model, conversion)
    print(conversion.summary())
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": conversion.state_dict, "__source__": args.input}, args.output)
    print(f"wrote {args.output}; use it as train.init_checkpoint (LazyConfig) or MODEL.WEIGHTS (yacs) "
          f"with {args.config_file}")


def load_official(path: str) -> dict:
    """The state_dict of an official checkpoint file (or a bare state_dict)."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = load_weights_file(path)
    except UnreadableCheckpointError as e:
        raise ValueError(str(e)) from None
    state_dict = checkpoint.get("model", checkpoint)
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(f"{path}: expected the official checkpoint, a dict whose 'model' is a state_dict")
    return state_dict


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    model = build_model(args.config_file, args.opts)
    state_dict = load_official(args.input)
    finish(model, convert_official_state_dict(state_dict), args)


if __name__ == "__main__":
    try:
        main()
    except ValueError as e:
        sys.exit(f"error: {e}")

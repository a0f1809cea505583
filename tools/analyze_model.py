#!/usr/bin/env python
"""Parameter count and FLOPs of a Deformable DETR LazyConfig model on one image.

    python tools/analyze_model.py \\
        --config-file configs/COCO/deformable_detr_r50_50ep.py
    python tools/analyze_model.py \\
        --config-file configs/COCO/deformable_detr_r50_single_scale_50ep.py \\
        --height 800 --width 1200
    python tools/analyze_model.py \\
        --config-file configs/synthetic/deformable_detr_tiny.py --height 320 --width 320 \\
        model.num_queries=50

FLOPs come from fvcore's FlopCountAnalysis (detectron2's subclass, which traces
detectron2 models with torch.jit): one "flop" per multiply-add, element-wise
ops not counted, the MSDA op d2ext::ms_deform_attn counted by
deformable_detr.export.flops (5 multiply-adds per channel per sampling point). The
model has random weights (nothing is loaded) and runs in eval mode, on one
--height x --width image (no resize), post-processing included.
"""

# deformable_detr first: it imports detectron2 with its import-time warnings silenced
import deformable_detr  # noqa: F401

# isort: split
import argparse
import logging
import sys

import torch
from fvcore.nn import flop_count_table

from deformable_detr.config.build import build_model, load_config
from deformable_detr.data.coco_json import DatasetError
from deformable_detr.export.flops import count_parameters, flop_count_analysis


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, help="LazyConfig .py or yacs .yaml file")
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1333)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--max-depth", type=int, default=2, help="depth of the per-module table (0: no table)"
    )
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="config overrides (key=value; KEY VALUE for yacs)"
    )
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # fvcore warns once per uncounted op
    try:
        cfg = load_config(args.config_file, args.opts)
        model = build_model(cfg, weights=None, device=args.device)
    except (DatasetError, KeyError, ValueError) as error:
        sys.exit(f"analyze_model: {args.config_file}: {error}")
    trainable, total = count_parameters(model)
    with torch.no_grad():
        image = torch.randint(0, 256, (3, args.height, args.width), dtype=torch.uint8)
        flops = flop_count_analysis(model, image.float().to(args.device))
        total_flops = flops.total()
    if args.max_depth > 0:
        print(flop_count_table(flops, max_depth=args.max_depth))
    by_operator = flops.by_operator()
    print(
        "FLOPs by operator (G): "
        + ", ".join(f"{k}: {v / 1e9:.2f}" for k, v in sorted(by_operator.items()))
    )
    uncounted = flops.unsupported_ops()
    if uncounted:
        print("not counted: " + ", ".join(f"{k} x{v}" for k, v in sorted(uncounted.items())))
    print(f"{args.config_file} at {args.height}x{args.width}:")
    print(
        f"  parameters: {trainable:,} trainable / {total:,} total "
        f"({trainable / 1e6:.1f}M / {total / 1e6:.1f}M)"
    )
    print(
        f"  FLOPs: {total_flops / 1e9:.1f} G (multiply-adds), "
        f"of which MSDA {by_operator.get('ms_deform_attn', 0) / 1e9:.2f} G"
    )


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Pretrain a detector's backbone without ImageNet, on your own COCO-format data: the
backbone of --config-file's model learns to classify the training set's objects,
cropped square around their boxes, and background crops, into the dataset's classes
plus "background" (deformable_detr.engine.backbone_pretraining; its settings are the
config's backbone_pretraining, configs/common/backbone_pretraining.py). Then train
the detector from it with train.init_checkpoint=OUTPUT.

    python tools/pretrain_backbone.py --config-file configs/custom/deformable_detr_tiny_custom.py \\
        --output output/backbone/pretrained.pth \\
        dataloader.train.dataset.json_file=train.json dataloader.train.dataset.image_root=images/ \\
        dataloader.test.dataset.json_file=val.json dataloader.test.dataset.image_root=images/ \\
        backbone_pretraining.epochs=20

The checkpoint loads into DETR-family models (backbone.*) and Faster R-CNN's feature
pyramid (backbone.bottom_up.*) alike; the crop accuracies on both sets are written
beside it (OUTPUT with .json).
"""

# deformable_detr first: it imports detectron2 with its import-time warnings silenced
import deformable_detr  # noqa: F401

# isort: split
import argparse
import json
import sys

from deformable_detr.config.build import ConfigKindError, load_config
from deformable_detr.config.overrides import ConfigOverrideError
from deformable_detr.data.coco_json import DatasetError
from deformable_detr.engine.backbone_pretraining import (
    PretrainingConfigError,
    pretrain_detector_backbone,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, help="a detector's LazyConfig")
    parser.add_argument("--output", required=True, help="the checkpoint to write (.pth)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="key=value config overrides")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        cfg = load_config(args.config_file, args.opts, lazy_only=True)
        record = pretrain_detector_backbone(cfg, args.output)
    except (ConfigKindError, ConfigOverrideError, DatasetError, PretrainingConfigError) as e:
        sys.exit(f"error: {e}")
    print(f"wrote {args.output}: {json.dumps(record)}")
    print(f"train from it with train.init_checkpoint={args.output}")


if __name__ == "__main__":
    main()

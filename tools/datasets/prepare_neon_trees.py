#!/usr/bin/env python
"""Prepares the NEON tree-crown images (docs/real_images.md): downloads the
deepforest 2.1.0 wheel with pip (not installed), extracts the two Yellowstone images
with their VOC XML files and example.csv into $D2EXT_DATASETS/neon_trees (default
~/.cache/d2ext/datasets/neon_trees), checks their sha256 and writes train.json and
val.json. A second run checks the files and does nothing.

    python tools/datasets/prepare_neon_trees.py
    python tools/datasets/prepare_neon_trees.py --wheel deepforest-2.1.0-py3-none-any.whl
"""

import argparse
import sys

from deformable_detr.data.coco_json import DatasetError
from deformable_detr.data.neon_trees import neon_trees_root, prepare_neon_trees


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", default=None, help=f"target folder (default {neon_trees_root()})")
    parser.add_argument("--wheel", default=None, help="a deepforest 2.1.0 wheel already downloaded")
    args = parser.parse_args(argv)
    try:
        prepare_neon_trees(args.root, args.wheel)
    except DatasetError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()

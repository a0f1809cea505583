#!/usr/bin/env python
"""Cuts the images of a COCO-format dataset into overlapping windows with their boxes,
written as an ordinary COCO-format dataset for configs/custom/ (docs/real_images.md).

    python tools/tile_dataset.py --json train.json --image-root images/ \\
        --output tiles/train --tile-size 400 --overlap 100 --min-fraction 0.5
    # then train on OUTPUT/images and OUTPUT/train.json:
    python tools/lazyconfig_train_net.py \\
        --config-file configs/custom/deformable_detr_tiny_custom.py \\
        dataloader.train.dataset.json_file=tiles/train/train.json \\
        dataloader.train.dataset.image_root=tiles/train/images ...

A box cut by a window's edge is kept, clipped, when at least --min-fraction of its
area is inside the window.
"""

import argparse
import logging
import sys

from deformable_detr.data.coco_json import DatasetError
from deformable_detr.data.tiling import tile_coco_dataset


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", required=True, help="the COCO-format JSON of the images")
    parser.add_argument("--image-root", required=True, help="folder of its images")
    parser.add_argument("--output", required=True, help="folder for images/ and the JSON")
    parser.add_argument("--tile-size", type=int, default=400, help="window side in pixels")
    parser.add_argument("--overlap", type=int, default=100, help="pixels shared by neighbours")
    parser.add_argument(
        "--min-fraction",
        type=float,
        default=0.5,
        help="a cut box is kept when at least this fraction of its area is in the window",
    )
    parser.add_argument(
        "--skip-empty", action="store_true", help="leave out the windows without a box"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        tile_coco_dataset(
            args.json,
            args.image_root,
            args.output,
            tile_size=args.tile_size,
            overlap=args.overlap,
            min_fraction=args.min_fraction,
            keep_empty=not args.skip_empty,
        )
    except (DatasetError, ValueError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Converts Pascal VOC XML, CSV rows or YOLO text files to a COCO-format JSON, which
configs/custom/ trains on unchanged (docs/real_images.md).

    python tools/convert_annotations.py --from voc --to coco \\
        --input annotations/ --image-root images/ --output train.json
    python tools/convert_annotations.py --from csv --to coco \\
        --input boxes.csv --image-root images/ --output train.json --classes Tree
    python tools/convert_annotations.py --from yolo --to coco \\
        --input labels/ --image-root images/ --output train.json --classes classes.txt

--input: VOC XML files or folders of them; CSV files with the header
image_path,xmin,ymin,xmax,ymax,label; or one folder of YOLO label files
(<image stem>.txt, lines "class cx cy w h" normalized), for the images of --image-root.
--classes: names separated by commas (ids 1..n in that order), a text file with one
name a line, or a COCO JSON whose categories (ids included) to use; required for
YOLO, else the labels found, sorted. Boxes leaving the image are clipped, inverted
or zero-area ones dropped (both counted); an error writes nothing.
"""

import argparse
import logging
import sys

from deformable_detr.data.coco_json import DatasetError
from deformable_detr.data.converters import FORMATS, convert_annotations, write_coco_json


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--from", dest="fmt", required=True, choices=FORMATS)
    parser.add_argument("--to", default="coco", choices=["coco"])
    parser.add_argument("--input", nargs="+", required=True, help="annotation files or folders")
    parser.add_argument("--image-root", required=True, help="folder of the images")
    parser.add_argument("--output", required=True, help="the COCO-format JSON to write")
    parser.add_argument("--classes", help="a,b,... or a text file or a COCO JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        conversion = convert_annotations(args.fmt, args.input, args.image_root, args.classes)
        write_coco_json(conversion.coco, args.output, args.image_root)
    except DatasetError as e:
        sys.exit(f"error: {e}")
    print(f"wrote {args.output}: {conversion.summary()}")


if __name__ == "__main__":
    main()

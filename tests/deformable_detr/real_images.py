"""Generated images and annotations in VOC, CSV and YOLO form for the tests of the
converters, the tiler and sliced inference; the prepared NEON tree-crown dataset
when it is there."""

import os

import numpy as np
import pytest
from PIL import Image

from deformable_detr.data.neon_trees import neon_trees_root

PREPARE_COMMAND = "python tools/datasets/prepare_neon_trees.py (or make neon-trees)"


def neon_trees_or_skip() -> str:
    """The prepared NEON dataset's folder; skips the test when it is not prepared."""
    root = neon_trees_root()
    if not os.path.isfile(os.path.join(root, "val.json")):
        pytest.skip(f"{root} is not prepared; run {PREPARE_COMMAND}")
    return root


def write_image(path, width: int, height: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return str(path)


def write_voc(path, file_name: str, width: int, height: int, objects) -> str:
    """objects: (label, xmin, ymin, xmax, ymax)."""
    body = "".join(
        f"<object><name>{label}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for label, x0, y0, x1, y1 in objects
    )
    path.write_text(
        f"<annotation><filename>{file_name}</filename><size><width>{width}</width>"
        f"<height>{height}</height><depth>3</depth></size>{body}</annotation>"
    )
    return str(path)

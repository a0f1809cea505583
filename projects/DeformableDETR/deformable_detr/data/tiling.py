"""Large images cut into overlapping windows, for training and for sliced inference
(deformable_detr.modeling.sliced_inference).

tile_coco_dataset() writes the windows of a COCO-format dataset's images, with
their boxes, as an ordinary COCO-format dataset (images/ and a JSON) that the
configs of configs/custom/ train on with the usual overrides. A box cut by a
window's edge is kept, clipped to the window, when at least `min_fraction` of its
area is inside; otherwise the window does not see it.
"""

import logging
import os
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

from .coco_json import DatasetError, _categories, _read_json, check_coco_json
from .converters import write_coco_json

__all__ = ["window_grid", "window_starts", "tile_boxes", "tile_coco_dataset"]

logger = logging.getLogger(__name__)


def window_starts(length: int, size: int, overlap: int) -> List[int]:
    """Starts of windows of `size` covering [0, length) with at least `overlap`
    pixels shared by neighbours: a stride of size - overlap, the last window moved
    back to end at the edge; one window (of the whole length) when length <= size."""
    if size <= 0 or not 0 <= overlap < size:
        raise ValueError(f"window size {size}, overlap {overlap}; expected 0 <= overlap < size")
    if length <= size:
        return [0]
    starts = list(range(0, length - size, size - overlap))
    return starts + [length - size]


def window_grid(
    height: int, width: int, size: int, overlap: int
) -> List[Tuple[int, int, int, int]]:
    """XYXY pixel windows covering an image (see window_starts), row by row."""
    return [
        (x, y, min(x + size, width), min(y + size, height))
        for y in window_starts(height, size, overlap)
        for x in window_starts(width, size, overlap)
    ]


def tile_boxes(
    boxes: np.ndarray, window: Sequence[int], min_fraction: float
) -> Tuple[np.ndarray, np.ndarray]:
    """The boxes a window keeps, in its pixels.

    Args:
        boxes: (N, 4) XYXY in image pixels, with positive area.
        window: XYXY in image pixels.
        min_fraction: the fraction of a box's area, in (0, 1], that must be inside.

    Returns:
        (indices (K,) of the kept boxes, their boxes (K, 4) clipped to the window
        and shifted to its origin).
    """
    x0, y0, x1, y1 = window
    clipped = np.stack(
        [
            boxes[:, 0].clip(x0, x1),
            boxes[:, 1].clip(y0, y1),
            boxes[:, 2].clip(x0, x1),
            boxes[:, 3].clip(y0, y1),
        ],
        axis=1,
    )
    inside = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = np.nonzero((inside > 0) & (inside >= min_fraction * area))[0]
    return keep, clipped[keep] - np.array([x0, y0, x0, y0], dtype=boxes.dtype)


def tile_coco_dataset(
    json_file: str,
    image_root: str,
    output_dir: str,
    *,
    tile_size: int,
    overlap: int,
    min_fraction: float = 0.5,
    keep_empty: bool = True,
    output_name: Optional[str] = None,
) -> str:
    """Writes the `tile_size` windows (neighbours sharing `overlap` pixels) of every
    image of a COCO-format dataset to `output_dir`/images/ as PNG, and their boxes
    (see tile_boxes; category ids and categories kept) to `output_dir`/`output_name`
    (default: the input JSON's name). Images no larger than a tile are one tile.
    keep_empty: also write the windows without a box (negatives for training).
    Returns the JSON's path."""
    if not 0.0 < min_fraction <= 1.0:
        raise ValueError(f"min_fraction={min_fraction}; expected a fraction in (0, 1]")
    window_starts(tile_size + 1, tile_size, overlap)  # checks size and overlap
    data = _read_json(json_file)
    data["categories"] = _categories(data, json_file)
    check_coco_json(data, json_file, image_root)
    boxes_of = {image["id"]: [] for image in data["images"]}
    for annotation in data.get("annotations", []):
        x, y, w, h = annotation["bbox"]
        if w > 0 and h > 0:
            boxes_of[annotation["image_id"]].append(annotation)
    out = {"images": [], "annotations": [], "categories": data["categories"]}
    tile_root = os.path.join(output_dir, "images")
    os.makedirs(tile_root, exist_ok=True)
    for image in data["images"]:
        path = os.path.join(image_root, image["file_name"])
        pixels = cv2.imread(path, cv2.IMREAD_COLOR)
        if pixels is None:
            raise DatasetError(f"{path}: not a readable image (of {json_file})")
        annotations = boxes_of[image["id"]]
        boxes = np.array([a["bbox"] for a in annotations], np.float64).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        stem = os.path.splitext(image["file_name"].replace(os.sep, "_"))[0]
        for window in window_grid(*pixels.shape[:2], tile_size, overlap):
            keep, tiled = tile_boxes(boxes, window, min_fraction)
            if not len(keep) and not keep_empty:
                continue
            x0, y0, x1, y1 = window
            tile_id = len(out["images"]) + 1
            file_name = f"{stem}_x{x0}_y{y0}.png"
            if not cv2.imwrite(os.path.join(tile_root, file_name), pixels[y0:y1, x0:x1]):
                raise DatasetError(f"could not write {os.path.join(tile_root, file_name)}")
            out["images"].append(
                {"id": tile_id, "file_name": file_name, "width": x1 - x0, "height": y1 - y0}
            )
            for index, (bx0, by0, bx1, by1) in zip(keep, tiled.tolist()):
                out["annotations"].append(
                    {"id": len(out["annotations"]) + 1, "image_id": tile_id,
                     "category_id": annotations[index]["category_id"],
                     "bbox": [bx0, by0, bx1 - bx0, by1 - by0], "area": (bx1 - bx0) * (by1 - by0),
                     "iscrowd": annotations[index].get("iscrowd", 0)}
                )  # fmt: skip
    output_json = os.path.join(output_dir, output_name or os.path.basename(json_file))
    write_coco_json(out, output_json, tile_root)
    logger.info(
        f"{json_file}: {len(data['images'])} images cut into {len(out['images'])} tiles of "
        f"{tile_size} (overlap {overlap}) with {len(out['annotations'])} boxes -> {output_json}"
    )
    return output_json

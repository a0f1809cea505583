"""A small COCO-format dataset unlike the synthetic shapes: bars and rings on
noisy grey, category ids 12 and 3 (listed in that order, not contiguous), for
the tests of training on one's own data."""

import json
from pathlib import Path

import cv2
import numpy as np

CATEGORIES = [{"id": 12, "name": "ring"}, {"id": 3, "name": "bar"}]
CLASS_NAMES = ["bar", "ring"]  # detectron2's order: by category id


def _draw(rng, image, kind: str, cx: int, cy: int, r: int, colour) -> list:
    """Draws a bar or a ring centred at (cx, cy) and returns its XYWH box."""
    if kind == "bar":
        half_w, half_h = (r, max(3, r // 3)) if rng.random() < 0.5 else (max(3, r // 3), r)
        cv2.rectangle(image, (cx - half_w, cy - half_h), (cx + half_w, cy + half_h), colour, -1)
        return [cx - half_w, cy - half_h, 2 * half_w + 1, 2 * half_h + 1]
    cv2.circle(image, (cx, cy), r, colour, thickness=max(2, r // 4))
    return [cx - r - 1, cy - r - 1, 2 * r + 3, 2 * r + 3]


def write_coco_folder(root: Path, split: str, num_images: int, seed: int, size: int = 96) -> tuple:
    """Writes root/split/*.png and root/split.json with one or two objects per image.
    Returns (json file, image folder)."""
    rng = np.random.default_rng(seed)
    image_dir = root / split
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        image = np.full((size, size, 3), rng.integers(60, 120), np.uint8)
        image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
        cells = rng.permutation(4)[: rng.integers(1, 3)]
        for cell in cells:
            kind = ("bar", "ring")[rng.integers(2)]
            r = int(rng.integers(size // 10, size // 5))
            cx = (cell % 2) * size // 2 + size // 4 + int(rng.integers(-3, 4))
            cy = (cell // 2) * size // 2 + size // 4 + int(rng.integers(-3, 4))
            colour = tuple(int(c) for c in rng.integers(170, 256, 3))
            box = _draw(rng, image, kind, cx, cy, r, colour)
            category = next(c["id"] for c in CATEGORIES if c["name"] == kind)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": [float(v) for v in box],
                    "area": float(box[2] * box[3]),
                    "iscrowd": 0,
                }
            )
        name = f"{image_id:04d}.png"
        cv2.imwrite(str(image_dir / name), image)
        images.append({"id": image_id, "file_name": name, "height": size, "width": size})
    json_file = root / f"{split}.json"
    json_file.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES})
    )
    return json_file, image_dir

"""A generated COCO-format benchmark that behaves like COCO where detectors differ:
objects in all three COCO size buckets in about COCO's proportions (small < 32^2,
medium, large > 96^2 pixels of area), about as many objects per image, with
partial occlusion, 8 classes that differ in fill and texture as well as in
outline (filled, hollow, striped), textured backgrounds and distractor shapes
that are not objects. Deterministic from its parameters and generated on first
use, as the synthetic shapes set of `make demo` (deformable_detr.data.synthetic)."""

import functools

import cv2
import numpy as np

from .synthetic import (
    _colour_far_from,
    _overlap,
    _tight_box,
    default_root,
    register_generated_dataset,
    write_dataset,
)

CLASSES = (
    "circle",
    "ring",
    "striped circle",
    "square",
    "frame",
    "striped square",
    "triangle",
    "cross",
)
DATASET_NAMES = ("shapes_benchmark_train", "shapes_benchmark_val")
# A toy-size copy for smoke tests of the whole study pipeline (tools/study.py --quick).
QUICK_DATASET_NAMES = ("shapes_benchmark_quick_train", "shapes_benchmark_quick_val")
QUICK = dict(num_train=4, num_val=2, image_size=(96, 128))
# Part of the marker: bump it when the drawing changes, so cached copies are redrawn.
VERSION = 1
# COCO's area ranges (pixels): small, medium, large
AREA_RANGES = ((0, 32**2), (32**2, 96**2), (96**2, float("inf")))
# Filled fraction of the circumscribing square of each outline (circle, square, triangle, cross).
_FILL = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.325, "cross": 5 / 9}


def _outline(name: str) -> str:
    return name.split()[-1].replace("ring", "circle").replace("frame", "square")


def _silhouette(outline: str, center, size: int, angle: float, shape) -> np.ndarray:
    """uint8 mask (H, W) of a filled outline whose circumscribing square has side `size`."""
    mask = np.zeros(shape, np.uint8)
    cx, cy = center
    r = size / 2
    if outline == "circle":
        cv2.circle(mask, (int(cx), int(cy)), int(round(r)), 1, thickness=-1)
    elif outline == "square":
        corners = np.array([[-r, -r], [r, -r], [r, r], [-r, r]])
        cv2.fillPoly(mask, [np.round(corners + (cx, cy)).astype(np.int32)], 1)
    elif outline == "triangle":
        angles = angle + np.array([0.0, 2.0, 4.0]) * np.pi / 3
        corners = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], axis=1)
        cv2.fillPoly(mask, [np.round(corners).astype(np.int32)], 1)
    else:  # a plus sign whose arms are a third of its size wide
        t = r / 3
        for w, h in ((r, t), (t, r)):
            corners = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) + (cx, cy)
            cv2.fillPoly(mask, [np.round(corners).astype(np.int32)], 1)
    return mask


def _object_mask(name: str, center, size: int, angle: float, shape) -> np.ndarray:
    """Boolean silhouette (H, W) of the object, and the pixels its colour paints
    (the silhouette, its rim for hollow shapes, its stripes for striped ones)."""
    outline = _outline(name)
    silhouette = _silhouette(outline, center, size, angle, shape).astype(bool)
    if name in ("ring", "frame"):
        thickness = max(2, size // 6)
        inner = _silhouette(outline, center, size - 2 * thickness, angle, shape).astype(bool)
        return silhouette, silhouette & ~inner
    if name.startswith("striped"):
        period = max(4, size // 4)
        ys, xs = np.indices(shape)
        phase = (xs * np.cos(angle) + ys * np.sin(angle)) // (period / 2)
        return silhouette, silhouette & (phase % 2 == 0)
    return silhouette, silhouette


def _background(rng, height: int, width: int) -> np.ndarray:
    """(H, W, 3) float32: a colour, a gradient, a sine grating and noise."""
    base = rng.integers(40, 216, 3).astype(np.float32)
    ys, xs = np.indices((height, width), dtype=np.float32)
    gradient = rng.uniform(-40, 40, 3) * (xs / width)[..., None]
    angle, period = rng.uniform(0, np.pi), rng.uniform(6, 40)
    grating = np.sin((xs * np.cos(angle) + ys * np.sin(angle)) * 2 * np.pi / period)
    image = base + gradient + rng.uniform(0, 25) * grating[..., None]
    return image + rng.uniform(2, 10) * rng.standard_normal((height, width, 3), np.float32)


def _draw_distractors(rng, image: np.ndarray, count: int) -> None:
    """Lines, elongated ellipses and arcs: clutter that is not an object."""
    height, width = image.shape[:2]
    for _ in range(count):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = int(rng.integers(width)), int(rng.integers(height))
        kind = rng.integers(3)
        if kind == 0:
            end = (int(rng.integers(width)), int(rng.integers(height)))
            cv2.line(image, (x, y), end, colour, int(rng.integers(1, 4)))
        else:
            axes = (int(rng.integers(8, 60)), int(rng.integers(2, 6)))
            angle = float(rng.uniform(0, 180))
            start, end = (0, 360) if kind == 1 else (0, int(rng.integers(60, 240)))
            thickness = -1 if kind == 1 else int(rng.integers(1, 4))
            cv2.ellipse(image, (x, y), axes, angle, start, end, colour, thickness)


def _object_size(rng, name: str, bucket_probs, max_side: int) -> int:
    """Side of the circumscribing square for an area drawn log-uniformly inside a
    COCO size bucket chosen with bucket_probs (the large bucket up to 2.5x its
    lower bound)."""
    bucket = rng.choice(3, p=bucket_probs)
    low, high = AREA_RANGES[bucket]
    low, high = max(low, 10**2), min(high, 2.5 * 96**2)
    area = np.exp(rng.uniform(np.log(low), np.log(high)))
    return int(np.clip(round(np.sqrt(area / _FILL[_outline(name)])), 8, max_side))


def _draw_image(
    rng,
    image_size,
    objects_per_image,
    bucket_probs,
    min_visible,
    max_overlap,
    distractors,
    min_contrast,
    attempts,
):
    """One image and its objects as (class index, XYXY box of the visible part,
    visible silhouette area). Objects are placed largest first and later ones
    occlude earlier ones; a placement
    that leaves an earlier object less than min_visible of its silhouette, or
    whose box covers more than max_overlap of another's, is redrawn."""
    height, width = (int(v) for v in rng.integers(image_size[0], image_size[1] + 1, 2))
    image = _background(rng, height, width)
    _draw_distractors(rng, image, int(rng.integers(distractors[0], distractors[1] + 1)))
    background = image.mean((0, 1))
    count = rng.integers(objects_per_image[0], objects_per_image[1] + 1)
    kinds = [int(k) for k in rng.integers(len(CLASSES), size=count)]
    sizes = [_object_size(rng, CLASSES[k], bucket_probs, min(height, width) - 2) for k in kinds]
    placed = []  # [class index, full silhouette, visible silhouette]
    # largest first: a large object placed last would rarely find room
    for size, kind in sorted(zip(sizes, kinds), reverse=True):
        for _ in range(attempts):
            center = rng.integers(size // 2, [width - size // 2, height - size // 2])
            angle = rng.uniform(0, 2 * np.pi)
            silhouette, paint = _object_mask(CLASSES[kind], center, size, angle, (height, width))
            if not silhouette.any():
                continue
            box = _tight_box(silhouette)
            if all(
                (visible & ~silhouette).sum() >= min_visible * full.sum()
                and _overlap(box, _tight_box(full)) <= max_overlap
                for _, full, visible in placed
            ):
                image[paint] = _colour_far_from(rng, background, min_contrast)
                for entry in placed:
                    entry[2] = entry[2] & ~silhouette
                placed.append([kind, silhouette, silhouette])
                break
    objects = [(kind, _tight_box(visible), int(visible.sum())) for kind, _, visible in placed]
    return np.clip(np.round(image), 0, 255).astype(np.uint8), objects


def generate_benchmark_dataset(
    root: str,
    num_train: int = 600,
    num_val: int = 200,
    seed: int = 0,
    image_size: tuple = (224, 288),
    objects_per_image: tuple = (4, 12),
    bucket_probs: tuple = (0.36, 0.31, 0.33),
    min_visible: float = 0.6,
    max_overlap: float = 0.6,
    distractors: tuple = (2, 8),
    min_contrast: float = 60.0,
    attempts: int = 20,
) -> None:
    """Writes root/{train,val}/*.jpg and root/annotations/{train,val}.json.

    Image height and width are drawn from `image_size` (inclusive range), the
    number of objects from `objects_per_image`, each object's COCO size bucket
    from `bucket_probs` (small, medium, large) and its area inside the bucket;
    `distractors` non-object shapes per image. Objects keep at least
    `min_visible` of their silhouette visible; colours differ from the image's
    mean by at least `min_contrast` per channel on average. Cached and atomic as
    deformable_detr.data.synthetic.write_dataset.

    The defaults draw more large objects than COCO has because large ones find
    room less often; docs/study.md gives the proportions placed.
    """
    write_dataset(
        root,
        _draw_image,
        CLASSES,
        VERSION,
        num_train,
        num_val,
        seed,
        image_size=image_size,
        objects_per_image=objects_per_image,
        bucket_probs=bucket_probs,
        min_visible=min_visible,
        max_overlap=max_overlap,
        distractors=distractors,
        min_contrast=min_contrast,
        attempts=attempts,
    )


def register_shapes_benchmark(names=DATASET_NAMES, root=None, **generate_kwargs) -> tuple:
    """Registers the benchmark under `root` (default $D2EXT_DATASETS/shapes_benchmark,
    or a directory named after the first name when other names are given) as the
    train and val `names`, generated with `generate_kwargs` on first load. Loading
    a config that names them writes nothing; the study registers smaller variants
    (e.g. for --quick) under their own names."""
    root = root or default_root(
        "shapes_benchmark" if tuple(names) == DATASET_NAMES else names[0].rsplit("_", 1)[0]
    )
    return register_generated_dataset(
        names,
        root,
        CLASSES,
        functools.partial(generate_benchmark_dataset, root, **generate_kwargs),
    )


if __name__.endswith(".shapes_benchmark"):  # not when run as a script
    register_shapes_benchmark()
    register_shapes_benchmark(QUICK_DATASET_NAMES, **QUICK)

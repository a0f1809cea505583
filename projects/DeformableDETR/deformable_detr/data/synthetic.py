"""A synthetic COCO-format dataset of coloured shapes on plain, lightly noisy
backgrounds: small and easy enough to train Deformable DETR on a CPU in minutes."""

import functools
import json
import os
import shutil
import tempfile
from typing import Callable, Sequence

import cv2
import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

CLASSES = ("circle", "square", "triangle")
SPLITS = ("train", "val")
DATASET_NAMES = ("synthetic_shapes_train", "synthetic_shapes_val")
MARKER = "complete.json"
# Part of the marker: bump it when the drawing changes, so cached copies are redrawn.
VERSION = 1


def _shape_mask(
    kind: int, center: np.ndarray, size: int, angle: float, height: int, width: int
) -> np.ndarray:
    """Boolean mask of one filled shape whose circumscribing square has side `size`."""
    mask = np.zeros((height, width), np.uint8)
    cx, cy = (int(v) for v in center)
    r = size // 2
    if CLASSES[kind] == "circle":
        cv2.circle(mask, (cx, cy), r, 1, thickness=-1)
    elif CLASSES[kind] == "square":
        cv2.rectangle(mask, (cx - r, cy - r), (cx + r, cy + r), 1, thickness=-1)
    else:  # an equilateral triangle at a random rotation
        angles = angle + np.array([0.0, 2.0, 4.0]) * np.pi / 3
        corners = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], axis=1)
        cv2.fillPoly(mask, [np.round(corners).astype(np.int32)], 1)
    return mask.astype(bool)


def _tight_box(mask: np.ndarray) -> np.ndarray:
    """XYXY box of the mask's pixels, pixel edges included."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over the smaller box's area. Unlike IoU it also rejects a
    small shape hidden inside a large one."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return w * h / smaller


def _colour_far_from(
    rng: np.random.Generator, background: np.ndarray, min_distance: float
) -> np.ndarray:
    while True:
        colour = rng.integers(0, 256, 3)
        if np.abs(colour - background).mean() >= min_distance:
            return colour


def _draw_image(
    rng, image_size, object_size, objects_per_image, max_overlap, max_noise, min_contrast, attempts
):
    """One image and its objects as (class index, XYXY box, pixel area)."""
    height, width = (int(v) for v in rng.integers(image_size[0], image_size[1] + 1, 2))
    background = rng.integers(0, 256, 3)
    image = np.empty((height, width, 3), np.float32)
    image[:] = background
    objects = []
    for _ in range(rng.integers(objects_per_image[0], objects_per_image[1] + 1)):
        for _ in range(attempts):
            kind = int(rng.integers(len(CLASSES)))
            size = int(rng.integers(object_size[0], min(object_size[1], height - 1, width - 1) + 1))
            center = rng.integers(
                size // 2, [width - size // 2, height - size // 2], endpoint=False
            )
            mask = _shape_mask(kind, center, size, rng.uniform(0, 2 * np.pi), height, width)
            box = _tight_box(mask)
            if all(_overlap(box, other) <= max_overlap for _, other, _ in objects):
                image[mask] = _colour_far_from(rng, background, min_contrast)
                objects.append((kind, box, int(mask.sum())))
                break
    image += rng.uniform(0, max_noise) * rng.standard_normal(image.shape, np.float32)
    return np.clip(np.round(image), 0, 255).astype(np.uint8), objects


def _write_split(
    image_dir: str,
    json_file: str,
    num_images: int,
    draw: Callable,
    classes: Sequence[str],
) -> None:
    """Writes num_images images of draw() -> (HxWx3 uint8 image, [(class index,
    XYXY box, area)]) as JPEGs and their COCO json."""
    os.makedirs(image_dir)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        image, objects = draw()
        file_name = f"{image_id:06d}.jpg"
        if not cv2.imwrite(
            os.path.join(image_dir, file_name), image, [cv2.IMWRITE_JPEG_QUALITY, 95]
        ):
            raise OSError(f"could not write {os.path.join(image_dir, file_name)}")
        images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "height": image.shape[0],
                "width": image.shape[1],
            }
        )
        for kind, (x0, y0, x1, y1), area in objects:
            # ids start at 1: pycocotools' COCOeval treats a matched gt id of 0 as unmatched
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": kind + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": area,
                    "iscrowd": 0,
                }
            )
    categories = [
        {"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(classes)
    ]
    with open(json_file, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)


def _is_complete(root: str, params: dict) -> bool:
    try:
        with open(os.path.join(root, MARKER)) as f:
            return json.load(f) == params
    except (OSError, ValueError):
        return False


def generate_shapes_dataset(
    root: str,
    num_train: int = 2000,
    num_val: int = 200,
    seed: int = 0,
    image_size: tuple = (128, 160),
    object_size: tuple = (16, 64),
    objects_per_image: tuple = (1, 4),
    max_overlap: float = 0.2,
    max_noise: float = 8.0,
    min_contrast: float = 60.0,
    attempts: int = 20,
) -> None:
    """Writes root/{train,val}/*.jpg and root/annotations/{train,val}.json.

    Image height and width are drawn from `image_size` (inclusive range), shape
    sizes from `object_size`; a placement whose box covers more than
    `max_overlap` of another box (or is covered as much) is redrawn, up to
    `attempts` times, else the object is left out. Backgrounds get Gaussian
    noise of a standard deviation up to `max_noise`; shape colours differ from
    the background by at least `min_contrast` per channel on average.

    Written by :func:`write_dataset` (cached, atomic).
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
        object_size=object_size,
        objects_per_image=objects_per_image,
        max_overlap=max_overlap,
        max_noise=max_noise,
        min_contrast=min_contrast,
        attempts=attempts,
    )


def write_dataset(
    root: str,
    draw_image: Callable,
    classes: Sequence[str],
    version: int,
    num_train: int,
    num_val: int,
    seed: int,
    **draw_args,
) -> None:
    """Writes the SPLITS of a generated COCO-format dataset under root (num_train
    and num_val images), each image drawn by draw_image(rng, **draw_args) ->
    (image, objects) with the split's generator numpy.random.default_rng([seed, i]).
    version, the counts, seed and draw_args (JSON) identify the data.

    A no-op when root holds a complete dataset of the same parameters. The data
    is written to a temporary directory beside root and renamed into place, so
    an interrupted run never leaves a partial dataset.
    """
    draw_args = {k: list(v) if isinstance(v, tuple) else v for k, v in draw_args.items()}
    params = dict(version=version, num_train=num_train, num_val=num_val, seed=seed, **draw_args)
    counts = (num_train, num_val)
    if _is_complete(root, params):
        return
    parent = os.path.dirname(os.path.abspath(root))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-" + os.path.basename(root) + "-")
    try:
        os.makedirs(os.path.join(tmp, "annotations"))
        for index, (split, count) in enumerate(zip(SPLITS, counts)):
            rng = np.random.default_rng([seed, index])
            _write_split(
                os.path.join(tmp, split),
                os.path.join(tmp, "annotations", split + ".json"),
                count,
                functools.partial(draw_image, rng, **draw_args),
                classes,
            )
        with open(os.path.join(tmp, MARKER), "w") as f:
            json.dump(params, f)
        _replace_dir(tmp, root, params)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _replace_dir(src: str, dst: str, params: dict) -> None:
    """Renames src to dst, moving an outdated dst out of the way first."""
    if os.path.exists(dst):
        old = tempfile.mkdtemp(
            dir=os.path.dirname(src), prefix=".old-" + os.path.basename(dst) + "-"
        )
        os.replace(dst, os.path.join(old, "data"))
        shutil.rmtree(old, ignore_errors=True)
    try:
        os.rename(src, dst)
    except OSError:
        # another process (e.g. another training rank) finished the same dataset first
        if not _is_complete(dst, params):
            raise


def default_root(name: str = "synthetic_shapes") -> str:
    """$D2EXT_DATASETS/name, by default under ~/.cache/d2ext/datasets."""
    base = os.environ.get(
        "D2EXT_DATASETS", os.path.join(os.path.expanduser("~"), ".cache", "d2ext", "datasets")
    )
    return os.path.join(base, name)


def register_synthetic_shapes(root: str | None = None, **generate_kwargs) -> tuple[str, str]:
    """Registers the dataset under `root` (default: :func:`default_root`) as
    "synthetic_shapes_train" and "synthetic_shapes_val" for COCO evaluation,
    without touching the disk: the first ``DatasetCatalog.get`` of either split
    generates both (see :func:`generate_shapes_dataset`, which `generate_kwargs`
    go to) unless they are already there. Returns the two names.

    Importing ``deformable_detr`` registers the default root, as detectron2's
    builtin datasets are registered on import."""
    root = root or default_root()
    return register_generated_dataset(
        DATASET_NAMES,
        root,
        CLASSES,
        functools.partial(generate_shapes_dataset, root, **generate_kwargs),
    )


def register_generated_dataset(
    names: Sequence[str], root: str, classes: Sequence[str], generate: Callable[[], None]
) -> tuple:
    """Registers the train and val splits of a dataset that write_dataset writes
    under root as `names`, for COCO evaluation; the first ``DatasetCatalog.get``
    of either calls generate(). Returns the names."""
    metadata = {
        "thing_classes": list(classes),
        # the mapping load_coco_json sets; set here too for evaluation without loading
        "thing_dataset_id_to_contiguous_id": {i + 1: i for i in range(len(classes))},
    }
    for name, split in zip(names, SPLITS):
        json_file = os.path.join(root, "annotations", split + ".json")
        image_root = os.path.join(root, split)
        if name in DatasetCatalog.list():
            registered = MetadataCatalog.get(name).json_file
            if registered != json_file:
                raise ValueError(f"{name} is already registered with {registered}, not {json_file}")
            continue

        def load(name=name, json_file=json_file, image_root=image_root):
            generate()
            return load_coco_json(json_file, image_root, name)

        DatasetCatalog.register(name, load)
        # COCOEvaluator reads json_file when it is built: build it after the dataset loader
        MetadataCatalog.get(name).set(
            json_file=json_file, image_root=image_root, evaluator_type="coco", **metadata
        )
    return tuple(names)


if __name__.endswith(".synthetic"):  # not when run as a script
    register_synthetic_shapes()

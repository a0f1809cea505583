"""Any COCO-format dataset, named in a config by its files alone:

    dataloader.train.dataset.json_file=... dataloader.train.dataset.image_root=...

It is registered in detectron2's catalogs when the data is first built (never when
the config loads), under the config's name; registering the same name again with
the same files changes nothing, with other files replaces the earlier entry. The
classes are the JSON's categories (any ids), in the order of their ids, which is
detectron2's contiguous order (load_coco_json). Bad input is one line naming the
file and what is wrong, before anything trains on it.
"""

import json
import logging
import os
import warnings
from typing import List, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from .ground_truth import clean_boxes, detection_dataset_dicts

__all__ = [
    "DatasetError",
    "check_same_classes",
    "warn_classes_without_training_boxes",
    "coco_json_classes",
    "coco_json_dataset",
    "register_coco_json",
]

logger = logging.getLogger(__name__)


class DatasetError(ValueError):
    """A dataset that cannot be trained or evaluated on, named with what is wrong."""


def _read_json(json_file: str) -> dict:
    if not json_file:
        raise DatasetError(
            "no annotation file given: set dataloader.train.dataset.json_file=... (and "
            "image_root, and the same for dataloader.test.dataset) to a COCO-format JSON"
        )
    if not os.path.isfile(json_file):
        raise DatasetError(f"{json_file}: no such annotation file (a COCO-format JSON expected)")
    try:
        with open(json_file) as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DatasetError(f"{json_file}: not a readable COCO-format JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError(f"{json_file}: not a COCO-format JSON (no 'images' list)")
    return data


def _categories(data: dict, json_file: str) -> List[dict]:
    categories = data.get("categories")
    if not categories or not isinstance(categories, list):
        raise DatasetError(
            f"{json_file}: no 'categories'; a COCO-format JSON lists its classes as "
            '"categories": [{"id": 1, "name": "..."}, ...]'
        )
    return sorted(categories, key=lambda c: c["id"])


def check_coco_json(data: dict, json_file: str, image_root: str) -> None:
    """Errors on annotations of unknown categories or images, and on missing image files."""
    if not os.path.isdir(image_root):
        raise DatasetError(f"{image_root}: no such image folder (image_root of {json_file})")
    if not data["images"]:
        raise DatasetError(f"{json_file}: no images; there is nothing to train or evaluate on")
    category_ids = {c["id"] for c in data["categories"]}
    image_ids = {image["id"] for image in data["images"]}
    for annotation in data.get("annotations", []):
        if annotation.get("category_id") not in category_ids:
            raise DatasetError(
                f"{json_file}: annotation {annotation.get('id')} has category_id "
                f"{annotation.get('category_id')}, which is not among its categories "
                f"{sorted(category_ids)}"
            )
        if annotation.get("image_id") not in image_ids:
            raise DatasetError(
                f"{json_file}: annotation {annotation.get('id')} is of image_id "
                f"{annotation.get('image_id')}, which is not among its images"
            )
    missing = [
        image["file_name"]
        for image in data["images"]
        if not os.path.isfile(os.path.join(image_root, image["file_name"]))
    ]
    if missing:
        raise DatasetError(
            f"{image_root}: {len(missing)} of the {len(data['images'])} images of {json_file} "
            f"are not there, e.g. {missing[0]}"
        )


def coco_json_classes(json_file: str) -> List[str]:
    """The class names of a COCO-format JSON: its categories' names by increasing id."""
    return [c["name"] for c in _categories(_read_json(json_file), json_file)]


def register_coco_json(name: str, json_file: str, image_root: str) -> str:
    """Registers a COCO-format dataset as `name` (see the module docstring) after
    checking it, with its classes in the metadata. Returns `name`."""
    metadata = MetadataCatalog.get(name) if name in MetadataCatalog.list() else None
    if (
        name in DatasetCatalog.list()
        and metadata is not None
        and (metadata.get("json_file"), metadata.get("image_root")) == (json_file, image_root)
    ):
        return name
    data = _read_json(json_file)
    categories = _categories(data, json_file)
    check_coco_json({**data, "categories": categories}, json_file, image_root)
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if metadata is not None:
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: load_coco_json(json_file, image_root, name))
    MetadataCatalog.get(name).set(
        json_file=json_file,
        image_root=image_root,
        evaluator_type="coco",
        thing_classes=[c["name"] for c in categories],
        thing_dataset_id_to_contiguous_id={c["id"]: i for i, c in enumerate(categories)},
    )
    return name


def coco_json_dataset(
    name: str, json_file: str, image_root: str, *, filter_empty: bool = False, clean: bool = True
) -> list:
    """The dataset dicts of a COCO-format dataset, registered as `name` first.

    clean: boxes clipped to their image, those without area dropped (training;
        see clean_boxes, which also stops on a dataset without any box).
    """
    register_coco_json(name, json_file, image_root)
    dicts = detection_dataset_dicts(name, filter_empty=filter_empty)
    return clean_boxes(dicts, name) if clean else dicts


def warn_classes_without_training_boxes(train_json: str, test_json: str) -> List[str]:
    """Warns (and returns them) about the classes that have boxes in the test JSON and
    none in the training JSON: the model cannot learn them, their AP will be 0."""

    def annotated(json_file: str) -> set:
        return {a.get("category_id") for a in _read_json(json_file).get("annotations", [])}

    names = {c["id"]: c["name"] for c in _categories(_read_json(test_json), test_json)}
    lacking = sorted(annotated(test_json) - annotated(train_json), key=str)
    missing = [names.get(i, str(i)) for i in lacking]
    if missing:
        logger.warning(
            f"{test_json} has boxes of {len(missing)} classes that {train_json} has none of "
            f"({', '.join(missing)}): the model cannot learn them and their AP will be 0"
        )
    return missing


def check_same_classes(
    train: Sequence[str], test: Sequence[str], train_source: str, test_source: str
) -> None:
    """Errors when two datasets used together list other categories (their class
    indices would not mean the same)."""
    if list(train) != list(test):
        raise DatasetError(
            f"{train_source} and {test_source} have different categories ({len(train)}: "
            f"{', '.join(train)}; {len(test)}: {', '.join(test)}); give datasets with the same "
            "categories, with the same ids"
        )


def register_yacs_datasets(cfg) -> None:
    """Former home of :func:`deformable_detr.data.build.register_yacs_datasets`,
    kept for code that imports it from here."""
    from .build import register_yacs_datasets as register

    warnings.warn(
        "deformable_detr.data.coco_json.register_yacs_datasets has moved to "
        "deformable_detr.data.build.register_yacs_datasets; import it from there",
        FutureWarning,
        stacklevel=2,
    )
    register(cfg)

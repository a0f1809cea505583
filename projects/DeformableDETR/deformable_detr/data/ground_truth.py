"""One ground truth for training and evaluation: boxes are clipped to their
image and those left without width or height dropped, by the same rule for the
training set (:func:`clean_boxes`) and for COCO evaluation
(:class:`DetrCOCOEvaluator`), each counted and reported once per dataset. A
dataset without annotations and an annotation file that is not valid JSON are
errors naming the dataset or the file."""

import json
import logging
from typing import List, Optional, Sequence, Union

from detectron2.data import MetadataCatalog, get_detection_dataset_dicts
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import BoxMode

__all__ = ["DetrCOCOEvaluator", "clean_boxes", "clip_box", "detection_dataset_dicts"]

logger = logging.getLogger(__name__)


def clip_box(box_xyxy: Sequence[float], width: float, height: float) -> Optional[List[float]]:
    """The box clipped to the (width, height) image, or None when it has no width or height left."""
    x0, y0, x1, y1 = (float(v) for v in box_xyxy)
    x0, x1 = min(max(x0, 0.0), width), min(max(x1, 0.0), width)
    y0, y1 = min(max(y0, 0.0), height), min(max(y1, 0.0), height)
    return [x0, y0, x1, y1] if x1 > x0 and y1 > y0 else None


class _Counts:
    def __init__(self):
        self.clipped = self.dropped = self.kept = 0

    def clip(self, box_xyxy, width, height) -> Optional[List[float]]:
        clipped = clip_box(box_xyxy, width, height)
        if clipped is None:
            self.dropped += 1
        else:
            self.kept += 1
            self.clipped += clipped != [float(v) for v in box_xyxy]
        return clipped

    def report(self, dataset_name: str, num_images: int) -> None:
        if self.kept == 0:
            raise ValueError(
                f"{dataset_name}: none of its {num_images} images has a valid box annotation; "
                "check its annotation file (training would learn nothing and COCO evaluation "
                "would give NaN)"
            )
        if self.clipped or self.dropped:
            logger.warning(
                f"{dataset_name}: {self.clipped} boxes clipped to their image and {self.dropped} "
                "dropped for zero width or height; training and evaluation both use the cleaned "
                "boxes"
            )


def clean_boxes(dataset_dicts: list, dataset_name: str = "dataset") -> list:
    """The dataset dicts with every box clipped to its image (XYXY_ABS) and the
    boxes left without width or height dropped; one warning counts them.

    Raises:
        ValueError: no box is left in the whole dataset.
    """
    counts, result = _Counts(), []
    for record in dataset_dicts:
        annotations = []
        for annotation in record.get("annotations", []):
            box = BoxMode.convert(annotation["bbox"], annotation["bbox_mode"], BoxMode.XYXY_ABS)
            clipped = counts.clip(box, record["width"], record["height"])
            if clipped is not None:
                annotations.append({**annotation, "bbox": clipped, "bbox_mode": BoxMode.XYXY_ABS})
        result.append({**record, "annotations": annotations})
    counts.report(dataset_name, len(result))
    return result


def detection_dataset_dicts(names: Union[str, Sequence[str]], filter_empty: bool = False) -> list:
    """detectron2's get_detection_dataset_dicts; an annotation file that is not
    valid JSON or has an annotation of a category it does not list is reported
    with its path."""
    names = [names] if isinstance(names, str) else list(names)
    files = [
        MetadataCatalog.get(n).get("json_file")
        for n in names
        if MetadataCatalog.get(n).get("json_file")
    ]
    either = " or ".join(files) or "the annotation file"
    try:
        return get_detection_dataset_dicts(names, filter_empty=filter_empty)
    except json.JSONDecodeError as e:
        broken = next((f for f in files if not _is_json(f)), either)
        raise ValueError(
            f"{broken}: not valid JSON ({e}); the annotation file is truncated or corrupt"
        ) from None
    except KeyError as e:  # detectron2's load_coco_json: "Encountered category_id=..."
        if "category_id" not in str(e):
            raise
        broken = next((f for f in files if _has_unknown_category(f)), either)
        raise ValueError(
            f"{broken}: {e.args[0]} Add the category to its 'categories' or fix the annotation"
        ) from None


def _has_unknown_category(path: str) -> bool:
    with open(path) as f:
        content = json.load(f)
    known = {category["id"] for category in content.get("categories", [])}
    return any(a.get("category_id") not in known for a in content.get("annotations", []))


def _is_json(path: str) -> bool:
    try:
        with open(path) as f:
            json.load(f)
        return True
    except (OSError, ValueError):
        return False


class DetrCOCOEvaluator(COCOEvaluator):
    """COCOEvaluator whose ground-truth boxes are cleaned by the rule of
    :func:`clean_boxes`, so a model is evaluated against what it was trained on."""

    def __init__(self, dataset_name: str, *args, **kwargs):
        super().__init__(dataset_name, *args, **kwargs)
        coco = self._coco_api
        images = {image["id"]: image for image in coco.dataset["images"]}
        counts, annotations = _Counts(), []
        for annotation in coco.dataset.get("annotations", []):
            image = images[annotation["image_id"]]
            box = BoxMode.convert(annotation["bbox"], BoxMode.XYWH_ABS, BoxMode.XYXY_ABS)
            clipped = counts.clip(box, image["width"], image["height"])
            if clipped is not None:
                annotations.append(
                    {
                        **annotation,
                        "bbox": BoxMode.convert(clipped, BoxMode.XYXY_ABS, BoxMode.XYWH_ABS),
                    }
                )
        counts.report(dataset_name, len(images))
        coco.dataset["annotations"] = annotations
        coco.createIndex()

"""deformable_detr.data.ground_truth: training and COCO evaluation clean boxes by
one rule (clip to the image, drop what has no width or height left), report it
once per dataset, and refuse a dataset without annotations or with invalid JSON."""

import json
import logging

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.structures import BoxMode

from deformable_detr.data.ground_truth import (
    DetrCOCOEvaluator,
    clean_boxes,
    clip_box,
    detection_dataset_dicts,
)

WIDTH, HEIGHT = 50, 40
# XYWH boxes: inside, leaving the image on the right, zero width, entirely outside
BOXES = [[5, 5, 10, 10], [40, 30, 20, 20], [7, 7, 0, 5], [60, 10, 5, 5]]
CLEANED_XYXY = [[5, 5, 15, 15], [40, 30, 50, 40]]


def _coco_json(path, boxes):
    images = [{"id": 1, "file_name": "a.jpg", "width": WIDTH, "height": HEIGHT}]
    annotations = [
        {
            "id": i + 1,
            "image_id": 1,
            "category_id": 1,
            "bbox": box,
            "area": box[2] * box[3],
            "iscrowd": 0,
        }
        for i, box in enumerate(boxes)
    ]
    path.write_text(
        json.dumps(
            {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "a"}]}
        )
    )
    return path


@pytest.fixture
def dataset(tmp_path, request):
    name = f"ground_truth_{request.node.name}"
    register_coco_instances(
        name, {}, str(_coco_json(tmp_path / "annotations.json", BOXES)), str(tmp_path)
    )
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def test_clip_box():
    assert clip_box([-5, 2, 10, 50], WIDTH, HEIGHT) == [0, 2, 10, HEIGHT]
    assert clip_box([3, 3, 3, 9], WIDTH, HEIGHT) is None
    assert clip_box([60, 3, 70, 9], WIDTH, HEIGHT) is None


def test_training_and_evaluation_see_the_same_boxes(dataset, caplog, tmp_path):
    with caplog.at_level(logging.WARNING, logger="deformable_detr.data.ground_truth"):
        [record] = clean_boxes(detection_dataset_dicts(dataset), dataset)
        evaluator = DetrCOCOEvaluator(dataset, output_dir=str(tmp_path / "eval"))
    assert [a["bbox"] for a in record["annotations"]] == CLEANED_XYXY
    assert all(a["bbox_mode"] == BoxMode.XYXY_ABS for a in record["annotations"])
    evaluated = [
        BoxMode.convert(a["bbox"], BoxMode.XYWH_ABS, BoxMode.XYXY_ABS)
        for a in evaluator._coco_api.loadAnns(evaluator._coco_api.getAnnIds())
    ]
    assert evaluated == CLEANED_XYXY
    reports = [r.getMessage() for r in caplog.records]
    expected = f"{dataset}: 1 boxes clipped to their image and 2 dropped for zero width or height"
    assert [m.startswith(expected) for m in reports] == [
        True,
        True,
    ]  # once for training, once for evaluation


def test_dataset_without_annotations_is_an_error(tmp_path):
    records = [{"file_name": "a.jpg", "width": WIDTH, "height": HEIGHT, "annotations": []}]
    with pytest.raises(
        ValueError, match="empty_set: none of its 1 images has a valid box annotation"
    ):
        clean_boxes(records, "empty_set")


def test_invalid_json_names_the_file(tmp_path, request):
    path = tmp_path / "broken.json"
    path.write_text('{"images": [')
    name = f"broken_{request.node.name}"
    register_coco_instances(name, {}, str(path), str(tmp_path))
    try:
        with pytest.raises(ValueError, match=f"{path}: not valid JSON"):
            detection_dataset_dicts(name)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)

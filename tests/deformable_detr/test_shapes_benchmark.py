"""The shapes benchmark: COCO's size buckets in about COCO's proportions, about 7
objects per image with occlusion, all 8 classes, valid COCO json, deterministic,
and registered without touching the disk."""

import json
from pathlib import Path

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from deformable_detr.data.shapes_benchmark import (
    CLASSES,
    generate_benchmark_dataset,
    register_shapes_benchmark,
)


@pytest.fixture(scope="module")
def train_json(tmp_path_factory):
    root = tmp_path_factory.mktemp("benchmark")
    generate_benchmark_dataset(str(root), num_train=40, num_val=2)
    return json.loads((root / "annotations" / "train.json").read_text())


def test_size_buckets_in_cocos_proportions(train_json):
    areas = np.array([a["area"] for a in train_json["annotations"]])
    small, large = (areas < 32**2).mean(), (areas > 96**2).mean()
    medium = 1 - small - large
    assert small == pytest.approx(0.41, abs=0.1)
    assert medium == pytest.approx(0.34, abs=0.1)
    assert large == pytest.approx(0.25, abs=0.1)


def test_several_objects_per_image_some_occluded(train_json):
    per_image = np.bincount([a["image_id"] for a in train_json["annotations"]])[1:]
    assert len(per_image) == 40 and 5.5 <= per_image.mean() <= 8.5 and per_image.min() >= 1
    boxes = {}
    for a in train_json["annotations"]:
        x, y, w, h = a["bbox"]
        boxes.setdefault(a["image_id"], []).append((x, y, x + w, y + h))
    overlapping = sum(
        1
        for image_boxes in boxes.values()
        for i, a in enumerate(image_boxes)
        for b in image_boxes[i + 1 :]
        if min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])
    )
    assert overlapping >= 10


def test_classes_and_boxes(train_json):
    assert [c["name"] for c in train_json["categories"]] == list(CLASSES)
    assert {a["category_id"] for a in train_json["annotations"]} == set(range(1, 9))
    images = {i["id"]: i for i in train_json["images"]}
    for a in train_json["annotations"]:
        x, y, w, h = a["bbox"]
        image = images[a["image_id"]]
        assert 0 <= x and 0 <= y and x + w <= image["width"] and y + h <= image["height"]
        assert 0 < a["area"] <= w * h


def _files(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_deterministic_from_its_parameters(tmp_path):
    for name in ("a", "b"):
        generate_benchmark_dataset(str(tmp_path / name), num_train=3, num_val=1)
    generate_benchmark_dataset(str(tmp_path / "c"), num_train=3, num_val=1, seed=1)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert _files(tmp_path / "a") != _files(tmp_path / "c")


def test_registered_lazily(tmp_path):
    names = ("bench_test_train", "bench_test_val")
    try:
        register_shapes_benchmark(names, root=str(tmp_path / "d"), num_train=2, num_val=1)
        assert not (tmp_path / "d").exists()
        assert MetadataCatalog.get(names[1]).thing_classes == list(CLASSES)
        assert len(DatasetCatalog.get(names[0])) == 2
        assert (tmp_path / "d" / "annotations" / "val.json").exists()
    finally:
        for name in names:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)

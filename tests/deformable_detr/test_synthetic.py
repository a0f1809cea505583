"""The synthetic shapes dataset: valid COCO json, tight boxes, deterministic,
cached, atomic, and registered for COCO evaluation."""

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from pycocotools.coco import COCO

from deformable_detr.data import synthetic
from deformable_detr.data.synthetic import generate_shapes_dataset, register_synthetic_shapes

SMALL = dict(num_train=20, num_val=5)
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "synthetic" / "deformable_detr_tiny.py"


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "shapes"
    generate_shapes_dataset(str(root), **SMALL)
    return root


def _files(root: Path) -> dict:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize("split, count", [("train", 20), ("val", 5)])
def test_coco_json_and_images(small_root, split, count):
    coco = COCO(str(small_root / "annotations" / f"{split}.json"))
    assert sorted(coco.getImgIds()) == list(range(1, count + 1))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["circle", "square", "triangle"]
    ann_ids = coco.getAnnIds()
    assert min(ann_ids) == 1 and len(set(ann_ids)) == len(ann_ids)
    for image_id, info in coco.imgs.items():
        image = cv2.imread(str(small_root / split / info["file_name"]))
        assert image.shape == (info["height"], info["width"], 3)
        assert 128 <= info["height"] <= 160 and 128 <= info["width"] <= 160
        annotations = coco.imgToAnns[image_id]
        assert 1 <= len(annotations) <= 4
        for a in annotations:
            x, y, w, h = a["bbox"]
            assert 0 <= x and 0 <= y and x + w <= info["width"] and y + h <= info["height"]
            assert 10 <= w <= 65 and 10 <= h <= 65
            assert 0 < a["area"] <= w * h
            assert a["category_id"] in (1, 2, 3) and a["iscrowd"] == 0


def test_boxes_are_tight(tmp_path):
    generate_shapes_dataset(
        str(tmp_path / "d"), num_train=10, num_val=0, objects_per_image=(1, 1), max_noise=0
    )
    data = json.loads((tmp_path / "d" / "annotations" / "train.json").read_text())
    for info, annotation in zip(data["images"], data["annotations"]):
        image = cv2.imread(str(tmp_path / "d" / "train" / info["file_name"])).astype(int)
        background = np.median(image.reshape(-1, 3), axis=0)
        ys, xs = np.nonzero(np.abs(image - background).sum(axis=2) > 60)
        x, y, w, h = annotation["bbox"]
        # JPEG blurs edges by about a pixel
        np.testing.assert_allclose(
            [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], [x, y, x + w, y + h], atol=1
        )


def test_deterministic(small_root, tmp_path):
    generate_shapes_dataset(str(tmp_path / "again"), **SMALL)
    assert _files(tmp_path / "again") == _files(small_root)
    generate_shapes_dataset(str(tmp_path / "other_seed"), seed=1, **SMALL)
    assert _files(tmp_path / "other_seed") != _files(small_root)


def test_second_call_is_a_no_op(small_root):
    mtimes = {p: p.stat().st_mtime_ns for p in small_root.rglob("*")}
    generate_shapes_dataset(str(small_root), **SMALL)
    assert {p: p.stat().st_mtime_ns for p in small_root.rglob("*")} == mtimes


def test_other_parameters_regenerate(tmp_path):
    root = tmp_path / "shapes"
    generate_shapes_dataset(str(root), **SMALL)
    generate_shapes_dataset(str(root), num_train=3, num_val=2)
    assert len(list((root / "train").iterdir())) == 3 and len(list((root / "val").iterdir())) == 2
    assert json.loads((root / synthetic.MARKER).read_text())["num_train"] == 3
    assert os.listdir(tmp_path) == ["shapes"]


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    draw = synthetic._draw_image
    calls = []

    def failing_draw(*args, **kwargs):
        calls.append(1)
        if len(calls) == 10:
            raise KeyboardInterrupt
        return draw(*args, **kwargs)

    monkeypatch.setattr(synthetic, "_draw_image", failing_draw)
    with pytest.raises(KeyboardInterrupt):
        generate_shapes_dataset(str(tmp_path / "shapes"), **SMALL)
    assert os.listdir(tmp_path) == []


@pytest.fixture
def clean_catalog():
    """Runs the test without the synthetic datasets registered, and puts back
    what was registered before."""
    saved = [
        (DatasetCatalog.pop(n, None), MetadataCatalog.pop(n, None)) for n in synthetic.DATASET_NAMES
    ]
    yield
    for name, (dataset, metadata) in zip(synthetic.DATASET_NAMES, saved):
        DatasetCatalog.pop(name, None)
        MetadataCatalog.pop(name, None)
        if dataset is not None:
            DatasetCatalog[name] = dataset
        if metadata is not None:
            MetadataCatalog[name] = metadata


def test_register(tmp_path, clean_catalog):
    root = tmp_path / "shapes"
    names = register_synthetic_shapes(str(root), **SMALL)
    assert names == ("synthetic_shapes_train", "synthetic_shapes_val")
    assert register_synthetic_shapes(str(root), **SMALL) == names
    assert not root.exists(), "registering writes nothing; the first load generates"
    for name, split, count in zip(names, ("train", "val"), (20, 5)):
        metadata = MetadataCatalog.get(name)
        assert metadata.json_file == str(root / "annotations" / f"{split}.json")
        assert metadata.image_root == str(root / split)
        assert metadata.evaluator_type == "coco"
        assert metadata.thing_classes == ["circle", "square", "triangle"]
        assert metadata.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2}
        # load_coco_json sets the same metadata again, which must agree
        dicts = DatasetCatalog.get(name)
        assert os.path.isfile(metadata.json_file)  # COCOEvaluator reads it when built
        assert len(dicts) == count
        assert {a["category_id"] for d in dicts for a in d["annotations"]} <= {0, 1, 2}
        assert all(os.path.isfile(d["file_name"]) for d in dicts)
    with pytest.raises(ValueError, match="already registered"):
        register_synthetic_shapes(str(tmp_path / "elsewhere"), **SMALL)


def test_default_root(monkeypatch, tmp_path):
    monkeypatch.setenv("D2EXT_DATASETS", str(tmp_path))
    assert synthetic.default_root() == str(tmp_path / "synthetic_shapes")
    monkeypatch.delenv("D2EXT_DATASETS")
    assert synthetic.default_root() == os.path.expanduser(
        "~/.cache/d2ext/datasets/synthetic_shapes"
    )


@pytest.mark.slow
def test_loading_the_config_writes_nothing(tmp_path):
    """LazyConfig.load of the synthetic config (as any tool reading it does)
    neither generates the dataset nor needs it; the datasets are registered."""
    code = (
        "from detectron2.config import LazyConfig; from detectron2.data import DatasetCatalog; "
        f"cfg = LazyConfig.load({str(CONFIG)!r}); "
        "assert {'synthetic_shapes_train', 'synthetic_shapes_val'} <= set(DatasetCatalog.list()); "
        "print(cfg.model.num_classes)"
    )
    env = dict(os.environ, D2EXT_DATASETS=str(tmp_path / "datasets"))
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-1] == "3"
    assert not (tmp_path / "datasets").exists()

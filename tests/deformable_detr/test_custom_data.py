"""Training on one's own COCO-format data with configs/custom/ and overrides alone:
fine-tuning from a checkpoint of the synthetic demo (another class count) re-
initialises the class heads and loads the rest, evaluates per class under the new
names and keeps model_best.pth; classes come from the JSON; bad input is one line."""

import json
import re

import pytest
import torch
from detectron2.config import LazyConfig
from detectron2.data import DatasetCatalog, MetadataCatalog

from deformable_detr.config.build import build_model, load_config
from deformable_detr.data.build import data_class_names
from deformable_detr.data.coco_json import DatasetError, coco_json_dataset, register_coco_json

from ..train_net_runs import ROOT, train_net
from .coco_folder import CLASS_NAMES, write_coco_folder

TINY_CUSTOM = ROOT / "configs" / "custom" / "deformable_detr_tiny_custom.py"
R50_CUSTOM = ROOT / "configs" / "custom" / "deformable_detr_r50_custom.py"
# Measured: 22.9 and 26.6 AP (bar 0.0, ring 45.8 and 53.3) after these 60 iterations in
# two runs, 16.4 and 22.4 after 30 (rings are learnt first). The
# re-initialised heads give every query the prior score on both classes, so before
# fine-tuning the ranking, and the AP, are near 0; 10 AP is learning, well above that.
MIN_AP = 10.0


@pytest.fixture(scope="module")
def coco_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("my_data")
    train = write_coco_folder(root, "train", 200, seed=0)
    val = write_coco_folder(root, "val", 24, seed=1)
    return train, val


def _data_overrides(coco_folder):
    (train_json, train_images), (val_json, val_images) = coco_folder
    return [
        f"dataloader.train.dataset.json_file={train_json}",
        f"dataloader.train.dataset.image_root={train_images}",
        f"dataloader.test.dataset.json_file={val_json}",
        f"dataloader.test.dataset.image_root={val_images}",
    ]


@pytest.fixture(scope="module")
def demo_checkpoint(tmp_path_factory, synthetic_datasets):
    """A checkpoint of the synthetic demo config (3 classes), briefly trained."""
    output_dir = tmp_path_factory.mktemp("demo") / "output"
    train_net(
        synthetic_datasets,
        f"train.output_dir={output_dir}",
        "train.max_iter=40",
        "train.seed=0",
        "train.eval_after_train=False",
        "dataloader.train.total_batch_size=4",
        "dataloader.train.num_workers=0",
    )
    return output_dir / "model_final.pth"


@pytest.fixture(scope="module")
def fine_tuned(coco_folder, demo_checkpoint, tmp_path_factory):
    """(output directory, log) of 60 iterations on the new data from the demo checkpoint."""
    output_dir = tmp_path_factory.mktemp("fine_tuned") / "output"
    log = train_net(
        output_dir.parent / "datasets",
        "--config-file",
        str(TINY_CUSTOM),
        *_data_overrides(coco_folder),
        f"train.init_checkpoint={demo_checkpoint}",
        f"train.output_dir={output_dir}",
        "train.max_iter=60",
        "train.seed=0",
        "dataloader.train.total_batch_size=4",
        "dataloader.train.num_workers=0",
        "dataloader.test.num_workers=0",
    )
    return output_dir, log


@pytest.mark.slow
def test_fine_tuning_from_the_demo_checkpoint(fine_tuned):
    output_dir, log = fine_tuned
    # the class heads of every decoder layer re-initialised, everything else loaded
    (line,) = [line for line in log.splitlines() if "of the model's" in line]
    heads = "class_embed.0.{bias,weight}, class_embed.1.{bias,weight}, class_embed.2.{bias,weight}"
    assert f"loaded 268 of the model's 274 tensors; re-initialised {heads}" in line
    assert "3 classes (circle, square, triangle), the model 2 (bar, ring)" in line
    assert "not in the checkpoint" not in line and "ignored" not in line
    # per-class AP under the JSON's names, and the mean above chance
    assert re.search(r"\| bar +\| [\d.]+ +\| ring +\| [\d.]+ +\|", log), log[-3000:]
    ap = float(re.findall(r"copypaste: ([\d.]+),", log)[-1])
    assert ap > MIN_AP, log[-3000:]
    # model_best.pth beside the last; both record the classes
    for name in ("model_best.pth", "model_final.pth"):
        checkpoint = torch.load(output_dir / name, map_location="cpu", weights_only=True)
        assert checkpoint["class_names"] == CLASS_NAMES


def test_classes_come_from_the_json(coco_folder):
    cfg = load_config(str(TINY_CUSTOM), _data_overrides(coco_folder))
    assert data_class_names(cfg) == CLASS_NAMES  # ordered by category id: 3 "bar", 12 "ring"
    assert build_model(cfg, weights=None).num_classes == 2
    cfg = load_config(str(TINY_CUSTOM), [*_data_overrides(coco_folder), "model.num_classes=5"])
    with pytest.raises(DatasetError, match=r"model.num_classes=5, but .*train.json has 2 categ"):
        build_model(cfg, weights=None)


def test_an_rcnn_takes_its_class_count_from_the_data(coco_folder):
    """detectron2's R-CNN configs keep the count in model.roi_heads.num_classes."""
    cfg = load_config(str(ROOT / "configs" / "shapes_benchmark" / "faster_rcnn_fpn.py"))
    cfg.model.roi_heads.num_classes = None
    model = build_model(cfg, weights=None, class_names=CLASS_NAMES)
    assert model.roi_heads.box_predictor.cls_score.out_features == len(CLASS_NAMES) + 1
    cfg.model.roi_heads.num_classes = 5
    with pytest.raises(DatasetError, match=r"model.roi_heads.num_classes=5, but the data has 2"):
        build_model(cfg, weights=None, class_names=CLASS_NAMES)


def test_loading_the_config_registers_nothing():
    before = set(DatasetCatalog.list())
    for config in (TINY_CUSTOM, R50_CUSTOM):
        LazyConfig.load(str(config))
    assert set(DatasetCatalog.list()) == before


def test_registering_the_same_name_again_never_collides(coco_folder):
    (train_json, train_images), (val_json, val_images) = coco_folder
    register_coco_json("my_data_test", str(train_json), str(train_images))
    register_coco_json("my_data_test", str(train_json), str(train_images))  # a no-op
    register_coco_json("my_data_test", str(val_json), str(val_images))  # replaces it
    assert MetadataCatalog.get("my_data_test").json_file == str(val_json)
    assert len(DatasetCatalog.get("my_data_test")) == 24
    assert MetadataCatalog.get("my_data_test").thing_dataset_id_to_contiguous_id == {3: 0, 12: 1}


def _broken_folder(tmp_path, change):
    json_file, images = write_coco_folder(tmp_path, "train", 3, seed=0, size=48)
    data = json.loads(json_file.read_text())
    change(data, images)
    json_file.write_text(json.dumps(data))
    return str(json_file), str(images)


def _unknown_category(data, images):
    data["annotations"][0]["category_id"] = 99


def _unknown_image(data, images):
    data["annotations"][0]["image_id"] = 42


def _missing_image(data, images):
    (images / data["images"][1]["file_name"]).unlink()


def _no_categories(data, images):
    del data["categories"]


def _no_images(data, images):
    data["images"], data["annotations"] = [], []


@pytest.mark.parametrize(
    "change, message",
    [
        (_unknown_category, r"annotation 1 has category_id 99, which is not among .*\[3, 12\]"),
        (_unknown_image, "annotation 1 is of image_id 42, which is not among its images"),
        (_missing_image, r"1 of the 3 images of .*train.json are not there, e.g. 0002.png"),
        (_no_categories, "no 'categories'"),
        (_no_images, "no images; there is nothing to train or evaluate on"),
    ],
)
def test_bad_data_is_one_line(tmp_path, change, message):
    json_file, images = _broken_folder(tmp_path, change)
    with pytest.raises(DatasetError, match=message) as error:
        coco_json_dataset(f"broken_{change.__name__}", json_file, images)
    assert "\n" not in str(error.value)


def test_missing_files_and_other_categories_are_one_line(tmp_path, coco_folder):
    (train_json, train_images), (val_json, val_images) = coco_folder
    with pytest.raises(DatasetError, match=f"^{tmp_path}/no.json: no such annotation file"):
        coco_json_dataset("missing_json", str(tmp_path / "no.json"), str(train_images))
    with pytest.raises(DatasetError, match=f"^{tmp_path}/none: no such image folder"):
        coco_json_dataset("missing_images", str(train_json), str(tmp_path / "none"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DatasetError, match="bad.json: not a readable COCO-format JSON"):
        coco_json_dataset("bad_json", str(tmp_path / "bad.json"), str(train_images))
    other = json.loads(val_json.read_text())
    other["categories"].append({"id": 30, "name": "star"})
    (tmp_path / "other.json").write_text(json.dumps(other))
    cfg = load_config(
        str(TINY_CUSTOM),
        [
            f"dataloader.train.dataset.json_file={train_json}",
            f"dataloader.test.dataset.json_file={tmp_path / 'other.json'}",
        ],
    )
    with pytest.raises(DatasetError, match="have different categories"):
        data_class_names(cfg)


@pytest.mark.slow
def test_demo_and_default_predictor_show_the_new_classes(fine_tuned, coco_folder):
    from detectron2.engine import DefaultPredictor

    from deformable_detr import load_yacs_config
    from deformable_detr.data.build import register_yacs_datasets

    from ..scripts import load_script

    best = fine_tuned[0] / "model_best.pth"
    # demo/demo.py with the LazyConfig and the weights alone: the classes they record
    demo = load_script("demo/demo.py")
    args = demo.parse_args(
        ["--config-file", str(TINY_CUSTOM), "--input", "x", "--output", "y", "--device", "cpu"]
        + ["--opts", f"train.init_checkpoint={best}"]
    )
    predictor, metadata = demo.setup(args)
    assert predictor.model.num_classes == 2 and metadata.thing_classes == CLASS_NAMES
    # the yacs twin: DATASETS.TEST_JSON registered, NUM_CLASSES from the JSON
    (_, _), (val_json, val_images) = coco_folder
    cfg = load_yacs_config(
        str(TINY_CUSTOM.with_suffix(".yaml")),
        ["MODEL.WEIGHTS", str(best), "MODEL.DEVICE", "cpu", "DATASETS.TEST_JSON", str(val_json)]
        + ["DATASETS.TEST_IMAGE_ROOT", str(val_images)],
    )
    register_yacs_datasets(cfg)
    predictor = DefaultPredictor(cfg)
    assert predictor.metadata.thing_classes == CLASS_NAMES
    assert predictor.model.class_names == CLASS_NAMES


def test_r50_custom_config_takes_converted_coco_weights(coco_folder, tmp_path, caplog):
    """The R-50 recipe on the new data from COCO weights as the converters write them
    (80 classes, detectron2's names): the heads re-initialised, the rest loaded."""
    import logging

    from deformable_detr.checkpoint.checkpointer import DetrCheckpointer
    from deformable_detr.checkpoint.loading_rule import LoadingRule
    from deformable_detr.checkpoint.state_dicts import coco_class_names

    coco_config = load_config(str(ROOT / "configs/COCO/deformable_detr_r50_50ep.py"))
    coco = build_model(coco_config, weights=None, device="cpu")
    path = tmp_path / "model_coco.pth"
    torch.save({"model": coco.state_dict(), "class_names": coco_class_names()}, path)
    cfg = load_config(str(R50_CUSTOM), _data_overrides(coco_folder))
    model = build_model(cfg, weights=None, device="cpu").train()
    checkpointer = DetrCheckpointer(model)
    checkpointer.loading_rule = LoadingRule(strict=False, class_names=data_class_names(cfg))
    with caplog.at_level(logging.WARNING, logger="deformable_detr.checkpoint.loading_rule"):
        checkpointer.load(str(path))
    assert "the checkpoint's class heads have 80 classes (person, bicycle," in caplog.text
    state, loaded = coco.state_dict(), model.state_dict()
    heads = [k for k in loaded if k.startswith("class_embed.")]
    assert all(torch.equal(loaded[k], state[k]) for k in loaded if k not in heads)
    assert model.class_embed[0].weight.shape == (2, 256)


def test_test_classes_without_training_boxes_are_a_warning(tmp_path, coco_folder, caplog):
    import logging

    (train_json, _), (val_json, val_images) = coco_folder
    train = json.loads(train_json.read_text())
    train["annotations"] = [a for a in train["annotations"] if a["category_id"] != 12]
    (tmp_path / "no_rings.json").write_text(json.dumps(train))
    cfg = load_config(
        str(TINY_CUSTOM),
        [
            f"dataloader.train.dataset.json_file={tmp_path / 'no_rings.json'}",
            f"dataloader.test.dataset.json_file={val_json}",
        ],
    )
    with caplog.at_level(logging.WARNING, logger="deformable_detr.data.coco_json"):
        assert data_class_names(cfg) == CLASS_NAMES
    assert "has boxes of 1 classes that" in caplog.text and "(ring)" in caplog.text

"""deformable_detr.checkpoint.loading_rule and deformable_detr.config.build: strict loading for
evaluation and inference (one error naming what does not fit), lenient loading with an
exact report for training, and class heads re-initialised when the classes differ, for
Deformable DETR, DETR and detectron2's Faster R-CNN alike, whatever the import order."""

import logging
import math
import subprocess
import sys

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import instantiate
from omegaconf import OmegaConf
from safetensors.torch import save_file

import deformable_detr  # noqa: F401  (installs the loading rule)
from deformable_detr.checkpoint.checkpointer import DetrCheckpointer, UnreadableCheckpointError
from deformable_detr.checkpoint.loading_rule import (
    LoadingRule,
    WeightsMismatchError,
    class_heads,
)
from deformable_detr.config.build import build_model as build_configured_model
from deformable_detr.config.build import load_config

from ..scripts import ROOT
from .tiny_model import build_model

PRIOR_BIAS = -math.log((1 - 0.01) / 0.01)


def _save(path, model, **extra):
    torch.save({"model": model.state_dict(), **extra}, path)
    return str(path)


def _class_head_keys(model):
    return [k for k in model.state_dict() if k.startswith("class_embed.")]


def test_weights_of_another_variant_are_refused_for_inference(tmp_path):
    path = _save(tmp_path / "two_stage.pth", build_model("two_stage"))
    with pytest.raises(WeightsMismatchError) as error:
        DetectionCheckpointer(build_model("multi_scale").eval()).load(path)
    message = str(error.value)
    assert message.startswith(f"{path}: the weights do not fit the model")
    assert "model keys missing: query_embed.weight" in message
    assert "unexpected keys" in message and "transformer.enc_output.{bias,weight}" in message
    assert "\n" not in message


def test_safetensors_missing_keys_are_refused_for_inference(tmp_path):
    state = build_model("multi_scale").state_dict()
    del state["transformer.level_embed"]
    save_file({k: v.clone() for k, v in state.items()}, str(tmp_path / "m.safetensors"))
    with pytest.raises(WeightsMismatchError, match="1 model keys missing: transformer.level_embed"):
        DetectionCheckpointer(build_model("multi_scale").eval()).load(
            str(tmp_path / "m.safetensors")
        )


def test_a_fitting_checkpoint_loads_exactly(tmp_path):
    source = build_model("box_refine")
    path = _save(tmp_path / "m.pth", source)
    model = build_model("box_refine").eval()
    DetectionCheckpointer(model).load(path)
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_no_weights_and_a_missing_file_are_one_line(tmp_path):
    with pytest.raises(WeightsMismatchError, match="^no weights given"):
        DetectionCheckpointer(build_model("multi_scale").eval()).load("")
    missing = str(tmp_path / "missing.pth")
    for mode in ("eval", "train"):
        with pytest.raises(UnreadableCheckpointError) as error:
            DetrCheckpointer(getattr(build_model("multi_scale"), mode)()).load(missing)
        assert str(error.value) == f"{missing}: no such weights file; check the path"


@pytest.mark.parametrize("variant", ["multi_scale", "box_refine", "two_stage"])
def test_fine_tuning_reinitialises_every_class_head_of_another_class_count(
    tmp_path, caplog, variant
):
    source = build_model(variant, num_classes=3)
    with torch.no_grad():
        for head in source.class_embed:
            head.bias.fill_(1.0)  # unlike the prior
    path = _save(tmp_path / "m.pth", source, class_names=["circle", "square", "triangle"])
    model = build_model(variant, num_classes=2).train()
    checkpointer = DetrCheckpointer(model)
    checkpointer.loading_rule = LoadingRule(strict=False, class_names=["bar", "ring"])
    with caplog.at_level(logging.INFO, logger="deformable_detr.checkpoint.loading_rule"):
        checkpointer.load(path)
    heads = _class_head_keys(model)
    # two-stage: one head per decoder layer plus the encoder's
    expected_heads = 2 + (1 if variant == "two_stage" else 0)
    assert {k.split(".")[1] for k in heads} == {str(i) for i in range(expected_heads)}
    for key, value in source.state_dict().items():
        if key not in heads:
            assert torch.equal(model.state_dict()[key], value), key
    for head in model.class_embed:
        assert head.weight.shape == (2, 32)
        torch.testing.assert_close(head.bias, torch.full((2,), PRIOR_BIAS))
    (line,) = [r.getMessage() for r in caplog.records if "re-initialised" in r.getMessage()]
    assert "class_embed.0.{bias,weight}" in line
    assert "the checkpoint's class heads have 3 classes (circle, square, triangle)" in line
    assert "the model 2 (bar, ring)" in line


def test_other_class_names_of_the_same_count_reinitialise_the_heads(tmp_path, caplog):
    source = build_model("multi_scale", num_classes=2)
    path = _save(tmp_path / "m.pth", source, class_names=["cat", "dog"])
    model = build_model("multi_scale", num_classes=2).train()
    with torch.no_grad():
        model.class_embed[0].bias.fill_(5.0)
    checkpointer = DetrCheckpointer(model)
    checkpointer.loading_rule = LoadingRule(strict=False, class_names=["bar", "ring"])
    with caplog.at_level(logging.WARNING, logger="deformable_detr.checkpoint.loading_rule"):
        checkpointer.load(path)
    torch.testing.assert_close(model.class_embed[0].bias, torch.full((2,), PRIOR_BIAS))
    assert not torch.equal(model.class_embed[0].weight, source.class_embed[0].weight)
    assert "the checkpoint's classes are (cat, dog), the data's (bar, ring)" in caplog.text

    # the same names: the heads load (a resume, or more training on the same data)
    model = build_model("multi_scale", num_classes=2).train()
    checkpointer = DetrCheckpointer(model)
    checkpointer.loading_rule = LoadingRule(strict=False, class_names=["cat", "dog"])
    checkpointer.load(path)
    assert torch.equal(model.class_embed[0].weight, source.class_embed[0].weight)


def test_unrecorded_classes_are_kept_with_a_warning_or_reinitialised_on_request(tmp_path, caplog):
    source = build_model("multi_scale", num_classes=2)
    path = _save(tmp_path / "m.pth", source)  # no class names recorded
    model = build_model("multi_scale", num_classes=2).train()
    with caplog.at_level(logging.WARNING, logger="deformable_detr.checkpoint.loading_rule"):
        DetrCheckpointer(model).load(path)
    assert torch.equal(model.class_embed[0].weight, source.class_embed[0].weight)
    assert "kept the checkpoint's 2-class heads" in caplog.text
    assert "train.reinit_class_heads=True" in caplog.text

    model = build_model("multi_scale", num_classes=2).train()
    checkpointer = DetrCheckpointer(model)
    checkpointer.loading_rule = LoadingRule(strict=False, reinit_class_heads=True)
    checkpointer.load(path)
    assert not torch.equal(model.class_embed[0].weight, source.class_embed[0].weight)


def test_inference_refuses_heads_of_other_classes(tmp_path):
    path = _save(
        tmp_path / "m.pth", build_model("multi_scale", num_classes=2), class_names=["a", "b"]
    )
    model = build_model("multi_scale", num_classes=2).eval()
    checkpointer = DetrCheckpointer(model)
    checkpointer.loading_rule = LoadingRule(strict=True, class_names=["bar", "ring"])
    with pytest.raises(WeightsMismatchError, match=r"the checkpoint's classes are \(a, b\)"):
        checkpointer.load(path)


def test_a_backbone_checkpoint_loads_leniently_with_a_report(tmp_path, caplog):
    source = build_model("multi_scale")
    backbone = {k: v for k, v in source.state_dict().items() if k.startswith("backbone.")}
    torch.save({"model": backbone}, tmp_path / "backbone.pth")
    model = build_model("multi_scale").train()
    with caplog.at_level(logging.INFO, logger="deformable_detr.checkpoint.loading_rule"):
        DetectionCheckpointer(model).load(str(tmp_path / "backbone.pth"))
    assert torch.equal(
        model.state_dict()["backbone.res5.0.conv1.weight"], backbone["backbone.res5.0.conv1.weight"]
    )
    total = len(model.state_dict())
    assert f"loaded {len(backbone)} of the model's {total} tensors" in caplog.text
    assert f"{total - len(backbone)} not in the checkpoint, left as initialised" in caplog.text


def test_build_model_loads_the_configured_weights_strictly(tmp_path):
    config = str(ROOT / "configs" / "synthetic" / "deformable_detr_tiny.py")
    model = build_configured_model(load_config(config), weights=None)
    assert not model.training
    path = _save(tmp_path / "m.pth", model)
    loaded = build_configured_model(load_config(config, [f"train.init_checkpoint={path}"]))
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    with pytest.raises(WeightsMismatchError, match="^no weights given"):
        build_configured_model(load_config(config))
    two_stage = load_config(config, ["model.with_box_refine=True", "model.two_stage=True"])
    with pytest.raises(WeightsMismatchError, match="the weights do not fit the model"):
        build_configured_model(two_stage, weights=path)


# the study's DETR and Faster R-CNN (detectron2's GeneralizedRCNN) and where each keeps
# its class count
STUDY_MODELS = {"detr": "num_classes", "faster_rcnn_fpn": "roi_heads.num_classes"}


def study_model(name, num_classes=8):
    """The model of configs/shapes_benchmark/<name>.py with random weights, in train mode:
    the raw module (not build_model's), for detectron2's own DetectionCheckpointer, with a
    class count of the test's choosing rather than the data's."""
    cfg = load_config(str(ROOT / "configs" / "shapes_benchmark" / f"{name}.py"))
    OmegaConf.update(cfg.model, STUDY_MODELS[name], num_classes)
    return instantiate(cfg.model).train()


def save_backbone(path, model):
    """A checkpoint of `model`'s backbone alone, as an ImageNet backbone's would load."""
    state = {k: v for k, v in model.state_dict().items() if k.startswith("backbone.")}
    torch.save({"model": state}, path)
    return str(path)


@pytest.mark.parametrize("name", STUDY_MODELS)
def test_detr_and_faster_rcnn_load_strictly_for_inference(name, tmp_path):
    model = study_model(name).eval()
    path = save_backbone(tmp_path / "backbone.pth", model)
    with pytest.raises(WeightsMismatchError) as error:
        DetectionCheckpointer(model).load(path)
    assert str(error.value).startswith(f"{path}: the weights do not fit the model (")
    assert "model keys missing: " in str(error.value)
    with pytest.raises(WeightsMismatchError, match="^no weights given"):
        DetectionCheckpointer(model).load("")
    fitting = _save(tmp_path / "model.pth", model)
    DetectionCheckpointer(study_model(name).eval()).load(fitting)


@pytest.mark.parametrize("name", STUDY_MODELS)
def test_fine_tuning_detr_and_faster_rcnn_reinitialises_their_class_heads(name, tmp_path, caplog):
    source = study_model(name, num_classes=3)
    path = _save(tmp_path / "m.pth", source, class_names=["circle", "square", "triangle"])
    model = study_model(name, num_classes=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    checkpointer = DetrCheckpointer(model)
    checkpointer.loading_rule = LoadingRule(strict=False, class_names=["bar", "ring"])
    with caplog.at_level(logging.INFO, logger="deformable_detr.checkpoint.loading_rule"):
        checkpointer.load(path)
    heads = class_heads(model)
    state = model.state_dict()
    head_keys = [k for k in state if heads.owns(k)]
    expected = {"detr": {"class_embed"}, "faster_rcnn_fpn": {"cls_score", "bbox_pred"}}[name]
    assert {k.split(".")[-2] for k in head_keys} == expected
    for key, value in source.state_dict().items():
        if key not in head_keys:
            assert torch.equal(state[key], value), key
    assert any(not torch.equal(state[k], before[k]) for k in head_keys if k.endswith("weight"))
    (line,) = [r.getMessage() for r in caplog.records if "re-initialised" in r.getMessage()]
    assert "the checkpoint's class heads have 3 classes (circle, square, triangle)" in line
    assert "the model 2 (bar, ring)" in line


# DefaultPredictor imported, and a model built and saved, before deformable_detr is
IMPORT_ORDER = """
import sys, torch
from detectron2.engine import DefaultPredictor
from detectron2 import model_zoo
from detectron2.config import get_cfg
from detectron2.modeling import build_model
cfg = get_cfg()
cfg.merge_from_file(model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"))
cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", 18,
                     "MODEL.RESNETS.RES2_OUT_CHANNELS", 64, "MODEL.WEIGHTS", sys.argv[1]])
state = build_model(cfg).state_dict()
torch.save({"model": {k: v for k, v in state.items() if k.startswith("backbone.")}}, sys.argv[1])
import deformable_detr
from deformable_detr.checkpoint.loading_rule import WeightsMismatchError
try:
    DefaultPredictor(cfg)
except WeightsMismatchError as e:
    print("refused:", e)
"""


@pytest.mark.slow
def test_default_predictor_of_a_faster_rcnn_is_strict_whatever_the_import_order(tmp_path):
    path = str(tmp_path / "backbone.pth")
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_ORDER, path], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"refused: {path}: the weights do not fit the model (" in result.stdout, result.stdout
    assert "roi_heads.box_predictor.cls_score.{bias,weight}" in result.stdout

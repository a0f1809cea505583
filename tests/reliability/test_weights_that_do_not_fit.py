"""Weights that do not fit the model are refused for evaluation and inference:
--eval-only, DefaultPredictor and the export tool given weights of another variant,
a safetensors file missing keys, a backbone alone (DETR and Faster R-CNN too), or
no weights at all stop with one line naming what does not fit, and a missing
weights file is one line naming it."""

import pytest
import torch
from safetensors.torch import save_file

from deformable_detr.checkpoint.loading_rule import WeightsMismatchError
from deformable_detr.config.build import build_model as build_configured_model
from deformable_detr.config.build import load_config

from ..deformable_detr.test_weights import STUDY_MODELS, save_backbone, study_model
from ..scripts import load_script
from ..train_net_runs import CONFIG, ROOT, train_net

YAML = ROOT / "configs" / "synthetic" / "deformable_detr_tiny.yaml"
SMALL = ["dataloader.test.num_workers=0", "train.log_period=1"]


@pytest.fixture(scope="module")
def two_stage_weights(tmp_path_factory):
    """A checkpoint of the synthetic config's model in its two-stage variant."""
    cfg = load_config(str(CONFIG), ["model.with_box_refine=True", "model.two_stage=True"])
    path = tmp_path_factory.mktemp("weights") / "two_stage.pth"
    torch.save({"model": build_configured_model(cfg, weights=None).state_dict()}, path)
    return path


def _last_line(log: str) -> str:
    return log.rstrip().splitlines()[-1]


def _refused_by_eval_only(tmp_path, weights, *config) -> str:
    """The last line of a --eval-only run with `weights` that must fail before evaluating."""
    log = train_net(
        tmp_path / "datasets",
        *config,
        "--eval-only",
        *SMALL,
        f"train.output_dir={tmp_path / 'output'}",
        f"train.init_checkpoint={weights}",
        succeeds=False,
    )
    assert "Evaluation results" not in log
    line = _last_line(log)
    assert line.startswith(f"error: {weights}: the weights do not fit the model ("), line
    return line


@pytest.mark.slow
def test_eval_only_refuses_weights_of_another_variant(tmp_path, two_stage_weights):
    line = _refused_by_eval_only(tmp_path, two_stage_weights)
    assert "model keys missing: query_embed.weight" in line and "unexpected keys" in line


@pytest.mark.slow
def test_eval_only_without_weights_is_an_error(tmp_path):
    log = train_net(
        tmp_path / "datasets",
        "--eval-only",
        *SMALL,
        f"train.output_dir={tmp_path / 'output'}",
        succeeds=False,
    )
    assert _last_line(log).startswith("error: no weights given (train.init_checkpoint"), log[-2000:]


@pytest.mark.slow
def test_a_missing_weights_file_is_one_line(tmp_path, synthetic_datasets):
    missing = tmp_path / "missing.pth"
    for flags in (["--eval-only"], ["train.max_iter=1", "dataloader.train.num_workers=0"]):
        log = train_net(
            synthetic_datasets,
            *flags,
            *SMALL,
            f"train.output_dir={tmp_path / 'output'}",
            f"train.init_checkpoint={missing}",
            succeeds=False,
        )
        assert _last_line(log) == f"error: {missing}: no such weights file; check the path"
        assert "AssertionError" not in log


@pytest.mark.parametrize("weights", ["two_stage", "safetensors_missing_keys", "none"])
def test_default_predictor_refuses_weights_that_do_not_fit(weights, two_stage_weights, tmp_path):
    from detectron2.engine import DefaultPredictor
    from detectron2.modeling import build_model

    from deformable_detr import load_yacs_config

    cfg = load_yacs_config(str(YAML), ["MODEL.DEVICE", "cpu"])
    if weights == "two_stage":
        cfg.MODEL.WEIGHTS = str(two_stage_weights)
    elif weights == "safetensors_missing_keys":
        state = {k: v.clone() for k, v in build_model(cfg).state_dict().items()}
        del state["transformer.level_embed"]
        cfg.MODEL.WEIGHTS = str(tmp_path / "model.safetensors")
        save_file(state, cfg.MODEL.WEIGHTS)
    message = {
        "two_stage": "the weights do not fit the model",
        "safetensors_missing_keys": "1 model keys missing: transformer.level_embed",
        "none": "no weights given",
    }[weights]
    with pytest.raises(WeightsMismatchError, match=message):
        DefaultPredictor(cfg)


def _study_config(name):
    return ROOT / "configs" / "shapes_benchmark" / f"{name}.py"


@pytest.mark.slow
@pytest.mark.parametrize("name", STUDY_MODELS)
def test_eval_only_refuses_a_backbone_alone_for_detr_and_faster_rcnn(name, tmp_path):
    backbone = save_backbone(tmp_path / "backbone.pth", study_model(name))
    line = _refused_by_eval_only(tmp_path, backbone, "--config-file", str(_study_config(name)))
    assert "model keys missing: " in line


@pytest.mark.slow
@pytest.mark.parametrize("name", STUDY_MODELS)
def test_export_refuses_a_backbone_alone_for_detr_and_faster_rcnn(name, tmp_path):
    backbone = save_backbone(tmp_path / "backbone.pth", study_model(name))
    args = ["--config-file", str(_study_config(name)), "--format", "torchscript"]
    with pytest.raises(SystemExit) as exit_info:
        load_script("tools/deploy/export_model.py").main(
            [*args, "--output", str(tmp_path / "out"), f"train.init_checkpoint={backbone}"]
        )
    message = str(exit_info.value.code)
    assert message.startswith(f"export_model: {backbone}: the weights do not fit the model ("), (
        message
    )

"""Weights that do not fit the model are refused for evaluation and inference:
--eval-only and DefaultPredictor given weights of another variant, a safetensors
file missing keys, or no weights at all stop with one line naming what does not
fit, and a missing weights file is one line naming it."""

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from safetensors.torch import save_file

from deformable_detr.checkpoint.loading_rule import WeightsMismatchError

from ..train_net_runs import CONFIG, ROOT, train_net

YAML = ROOT / "configs" / "synthetic" / "deformable_detr_tiny.yaml"
SMALL = ["dataloader.test.num_workers=0", "train.log_period=1"]


@pytest.fixture(scope="module")
def two_stage_weights(tmp_path_factory):
    """A checkpoint of the synthetic config's model in its two-stage variant."""
    cfg = LazyConfig.apply_overrides(
        LazyConfig.load(str(CONFIG)), ["model.with_box_refine=True", "model.two_stage=True"]
    )
    path = tmp_path_factory.mktemp("weights") / "two_stage.pth"
    torch.save({"model": instantiate(cfg.model).state_dict()}, path)
    return path


def _last_line(log: str) -> str:
    return log.rstrip().splitlines()[-1]


def test_eval_only_refuses_weights_of_another_variant(tmp_path, two_stage_weights):
    log = train_net(
        tmp_path / "datasets",
        "--eval-only",
        *SMALL,
        f"train.output_dir={tmp_path / 'output'}",
        f"train.init_checkpoint={two_stage_weights}",
        succeeds=False,
    )
    line = _last_line(log)
    assert line.startswith(f"error: {two_stage_weights}: the weights do not fit the model ("), line
    assert "model keys missing: query_embed.weight" in line and "unexpected keys" in line
    assert "Evaluation results" not in log


def test_eval_only_without_weights_is_an_error(tmp_path):
    log = train_net(
        tmp_path / "datasets",
        "--eval-only",
        *SMALL,
        f"train.output_dir={tmp_path / 'output'}",
        succeeds=False,
    )
    assert _last_line(log).startswith("error: no weights given (train.init_checkpoint"), log[-2000:]


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

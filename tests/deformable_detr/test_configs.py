"""Every config instantiates; the yacs route (DefaultPredictor) builds the same
model as the LazyConfig route."""

import math
from pathlib import Path

import pytest
import torch
from detectron2.config import instantiate
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model

from deformable_detr import load_yacs_config
from deformable_detr.config.build import build_model as build_configured_model
from deformable_detr.config.build import load_config
from deformable_detr.config.overrides import apply_overrides
from deformable_detr.solver.schedule import epoch_step_multiplier, resolve_schedule

COCO_TRAIN_IMAGES = 118_287

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
COCO_VARIANTS = ["", "_single_scale", "_box_refine", "_two_stage"]


def _lazy(variant):
    return load_config(str(CONFIGS / "COCO" / f"deformable_detr_r50{variant}_50ep.py"))


def _yacs(variant):
    return load_yacs_config(
        str(CONFIGS / "COCO" / f"deformable_detr_r50{variant}_50ep.yaml"), ["MODEL.DEVICE", "cpu"]
    )


@pytest.mark.parametrize("variant", COCO_VARIANTS)
def test_coco_config_instantiates(variant):
    cfg = _lazy(variant)
    model = build_configured_model(cfg, weights=None, device="cpu")
    resolve_schedule(cfg, COCO_TRAIN_IMAGES)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    scheduler = instantiate(cfg.lr_multiplier)
    # the recipe: lr 2e-4, backbone and sampling offsets 0.1x, weight decay 1e-4,
    # step at epoch 40 of 50
    lrs = {round(group["lr"], 10) for group in optimizer.param_groups}
    assert lrs == {2e-4, 2e-5}
    assert {group["weight_decay"] for group in optimizer.param_groups} == {1e-4}
    assert cfg.train.max_iter == 184_824 and cfg.dataloader.train.total_batch_size == 32
    assert cfg.train.checkpointer.period == 3697 and cfg.train.eval_period == 18_483
    assert (
        scheduler(0.0) == 1.0 and scheduler(0.79) == 1.0 and scheduler(0.81) == pytest.approx(0.1)
    )
    assert cfg.train.clip_max_norm == 0.1
    assert cfg.model.num_classes == 80, (
        "detectron2's contiguous COCO ids, from the dataset metadata"
    )
    for mapper in (cfg.dataloader.train.mapper, cfg.dataloader.test.mapper):
        instantiate(mapper)


@pytest.mark.parametrize("route", ["lazy", "yacs"])
def test_encoder_ffn_row_blocks_reach_the_encoder_only(route):
    if route == "lazy":
        cfg = _lazy("")
        apply_overrides(cfg, ["model.transformer.encoder_ffn_row_blocks=4"])
        model = build_configured_model(cfg, weights=None, device="cpu")
    else:
        cfg = _yacs("")
        cfg.merge_from_list(["MODEL.DEFORMABLE_DETR.ENCODER_FFN_ROW_BLOCKS", 4])
        model = build_model(cfg)
    transformer = model.transformer
    assert [layer.ffn.row_blocks for layer in transformer.encoder.layers] == [4] * 6
    assert [layer.ffn.row_blocks for layer in transformer.decoder.layers] == [1] * 6


@pytest.mark.parametrize("route", ["lazy", "yacs"])
def test_coco_backbone_trains_as_the_recipe(route):
    """The paper's R-50: frozen batch norm everywhere, the stem and res2 frozen,
    res3 to res5 trained."""
    if route == "lazy":
        model = build_configured_model(_lazy(""), weights=None, device="cpu")
    else:  # DefaultPredictor's
        model = build_model(_yacs(""))
    backbone = model.backbone
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in backbone.modules())
    for name in ("stem", "res2"):
        assert not any(p.requires_grad for p in getattr(backbone, name).parameters()), (
            f"{name} trains"
        )
    for name in ("res3", "res4", "res5"):
        assert all(p.requires_grad for p in getattr(backbone, name).parameters()), (
            f"{name} is frozen"
        )


@pytest.mark.parametrize("variant", COCO_VARIANTS)
def test_yacs_and_lazy_configs_build_the_same_model(variant):
    lazy_model = build_configured_model(_lazy(variant), weights=None, device="cpu")
    yacs_model = build_model(_yacs(variant)).eval()
    lazy_state, yacs_state = lazy_model.state_dict(), yacs_model.state_dict()
    assert lazy_state.keys() == yacs_state.keys()
    assert all(lazy_state[k].shape == yacs_state[k].shape for k in lazy_state)
    yacs_model.load_state_dict(lazy_state)
    inputs = [{"image": torch.randint(0, 256, (3, 96, 128)).float(), "height": 96, "width": 128}]
    with torch.no_grad():
        a = lazy_model(inputs)[0]["instances"]
        b = yacs_model(inputs)[0]["instances"]
    torch.testing.assert_close(a.pred_boxes.tensor, b.pred_boxes.tensor)
    torch.testing.assert_close(a.scores, b.scores)
    assert torch.equal(a.pred_classes, b.pred_classes)


@pytest.mark.parametrize("batch_size", [16, 32, 64])
def test_epochs_stay_epochs_when_the_batch_changes(batch_size):
    """dataloader.train.total_batch_size=16 trains the recipe's 50 epochs (not 25), with
    the lr drop after 40 and the lr scaled by the square-root rule."""
    cfg = _lazy("")
    cfg = apply_overrides(cfg, [f"dataloader.train.total_batch_size={batch_size}"])
    resolve_schedule(cfg, COCO_TRAIN_IMAGES)
    iterations_per_epoch = COCO_TRAIN_IMAGES / batch_size
    assert cfg.train.max_iter == pytest.approx(50 * iterations_per_epoch, abs=1)
    assert cfg.train.checkpointer.period == pytest.approx(iterations_per_epoch, abs=1)
    assert cfg.train.eval_period == pytest.approx(5 * iterations_per_epoch, abs=1)
    scheduler = instantiate(cfg.lr_multiplier)
    drop = 40 * iterations_per_epoch / cfg.train.max_iter
    assert scheduler(drop - 1e-4) == 1.0 and scheduler(drop + 1e-4) == pytest.approx(0.1)
    assert cfg.optimizer.lr == pytest.approx(2e-4 * (batch_size / 32) ** 0.5)


def test_an_explicit_max_iter_wins_over_epochs():
    cfg = load_config(str(CONFIGS / "synthetic" / "deformable_detr_tiny.py"))
    cfg = apply_overrides(cfg, ["train.max_iter=7", "dataloader.train.total_batch_size=2"])
    resolve_schedule(cfg, 2000)
    assert cfg.train.max_iter == 7 and cfg.train.checkpointer.period == 500
    assert cfg.optimizer.lr == pytest.approx(4e-4 / 2)


def _drop_iteration(cfg) -> int:
    """The first iteration at which cfg.lr_multiplier is below 1 (max_iter if none)."""
    scheduler = instantiate(cfg.lr_multiplier)
    max_iter = cfg.train.max_iter
    return next((i for i in range(max_iter) if scheduler(i / max_iter) < 1.0), max_iter)


@pytest.mark.parametrize(
    "config, num_images, batch_size, epochs, drop_epochs, max_iter",
    [
        # README: 184,824 iterations on train2017's 118,287 images at batch 32
        ("COCO/deformable_detr_r50_50ep.py", COCO_TRAIN_IMAGES, 32, 50, 40, 184_824),
        ("COCO/detr_r50_500ep.py", COCO_TRAIN_IMAGES, 64, 500, 400, 924_118),
        # README: 1125 iterations at batch 8 of the 2000 generated images
        ("synthetic/deformable_detr_tiny.py", 2000, 8, 4.5, 4, 1125),
        ("custom/deformable_detr_r50_custom.py", 1000, 32, 50, 40, None),
        ("custom/deformable_detr_tiny_custom.py", 1000, 8, 4.5, 4, None),
        # docs/study.md: 5 epochs (DETR 50) of 300 iterations, the lr / 10 after 80%
        ("shapes_benchmark/deformable_detr_two_stage.py", 600, 2, 5, 4, 1500),
        ("shapes_benchmark/detr.py", 600, 2, 50, 40, 15_000),
        ("shapes_benchmark/faster_rcnn_fpn.py", 600, 2, 5, 4, 1500),
    ],
)
def test_every_config_family_states_its_schedule_in_epochs(
    config, num_images, batch_size, epochs, drop_epochs, max_iter
):
    cfg = load_config(str(CONFIGS / config))
    assert cfg.train.epochs == epochs and cfg.dataloader.train.total_batch_size == batch_size
    resolve_schedule(cfg, num_images)
    if max_iter is not None:
        assert cfg.train.max_iter == max_iter
    assert cfg.train.max_iter == math.ceil(epochs * num_images / batch_size)
    # the drop is a fraction of the run, exact to 1e-6 of it
    assert _drop_iteration(cfg) == pytest.approx(drop_epochs / epochs * cfg.train.max_iter, abs=1)


@pytest.mark.parametrize("batch_size", [1, 4, 8])
def test_the_study_schedule_follows_the_batch(batch_size):
    """dataloader.train.total_batch_size rescales a study config's iterations,
    evaluation and checkpoint periods and lr drop, and scales its lr from batch 2."""
    cfg = load_config(str(CONFIGS / "shapes_benchmark" / "deformable_detr.py"))
    cfg = apply_overrides(cfg, [f"dataloader.train.total_batch_size={batch_size}"])
    resolve_schedule(cfg, 600)
    per_epoch = math.ceil(600 / batch_size)
    assert cfg.train.eval_period == cfg.train.checkpointer.period == per_epoch
    assert cfg.train.max_iter == 5 * per_epoch
    assert _drop_iteration(cfg) == pytest.approx(4 * per_epoch, abs=1)
    assert cfg.optimizer.lr == pytest.approx(2e-4 * (batch_size / 2) ** 0.5)


def test_an_lr_drop_outside_the_run_is_an_error():
    with pytest.raises(ValueError, match="lr drop after 40 of 12 epochs"):
        epoch_step_multiplier(total_epochs=12, drop_epochs=40)

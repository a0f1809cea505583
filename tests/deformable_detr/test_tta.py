"""DeformableDETRWithTTA: the model itself at one size without flip, boxes of
resized and flipped images mapped back, per-class merging (weighted box fusion or
NMS), the config switch of --eval-only and DefaultPredictor, and a gain in AP on
the synthetic validation set."""

import numpy as np
import pytest
import torch
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model as build_yacs_model
from detectron2.structures import Boxes, Instances
from torch import nn

from deformable_detr import load_yacs_config
from deformable_detr.config.build import load_config
from deformable_detr.config.overrides import apply_overrides
from deformable_detr.modeling.box_fusion import weighted_boxes_fusion
from deformable_detr.modeling.test_time_augmentation import (
    DeformableDETRWithTTA,
    with_test_time_augmentation,
)

from ..scripts import ROOT
from ..train_net_runs import MULTISCALE_CONFIG as MULTISCALE
from ..train_net_runs import eval_ap
from .tiny_model import build_model

SYNTHETIC = ROOT / "configs" / "synthetic" / "deformable_detr_tiny"


@pytest.mark.parametrize("variant", ["multi_scale", "two_stage"])
def test_one_size_without_flip_is_the_model(variant):
    model = build_model(variant).eval()
    image = torch.randint(0, 256, (3, 90, 120), dtype=torch.uint8)
    inputs = [{"image": image, "height": 90, "width": 120}]
    tta = DeformableDETRWithTTA(model, min_sizes=[90], max_size=1000, flip=False)
    with torch.no_grad():
        expected = model(inputs)[0]["instances"]
        got = tta(inputs)[0]["instances"]
    assert got.image_size == (90, 120) and len(got) == len(expected) > 0
    torch.testing.assert_close(got.pred_boxes.tensor, expected.pred_boxes.tensor, rtol=0, atol=0)
    torch.testing.assert_close(got.scores, expected.scores, rtol=0, atol=0)
    assert torch.equal(got.pred_classes, expected.pred_classes)


class CornerDetector(nn.Module):
    """Detects one box, [0, 0, 8, 8] of class 1, in the top-left corner of
    whatever image it gets, and records the image sizes."""

    test_topk = 10

    def __init__(self):
        super().__init__()
        self.sizes = []

    def forward(self, batched_inputs):
        (x,) = batched_inputs
        self.sizes.append(tuple(x["image"].shape[1:]))
        instances = Instances((x["height"], x["width"]))
        instances.pred_boxes = Boxes(torch.tensor([[0.0, 0.0, 8.0, 8.0]]))
        instances.scores = torch.tensor([0.9])
        instances.pred_classes = torch.tensor([1])
        return [{"instances": instances}]


def test_boxes_of_resized_and_flipped_images_map_back():
    """The input was resized from 50x60 to 100x120; sizes 100 and 200, each with a
    flip: the corner box comes back in original pixels, at the left (4x4 at
    100, 2x2 at 200) and mirrored to the right; equal boxes merge."""
    detector = CornerDetector().eval()
    tta = DeformableDETRWithTTA(
        detector, min_sizes=[100, 200], max_size=1000, flip=True, merge="nms", iou_threshold=0.7
    )
    image = torch.randint(0, 256, (3, 100, 120), dtype=torch.uint8)
    (out,) = tta([{"image": image, "height": 50, "width": 60}])
    assert detector.sizes == [(100, 120), (100, 120), (200, 240), (200, 240)]
    instances = out["instances"]
    assert instances.image_size == (50, 60)
    boxes = sorted(map(tuple, np.round(instances.pred_boxes.tensor.numpy(), 4).tolist()))
    assert boxes == [(0, 0, 2, 2), (0, 0, 4, 4), (56, 0, 60, 4), (58, 0, 60, 2)]
    assert (instances.pred_classes == 1).all()


def test_nms_keeps_the_best_of_overlapping_boxes_per_class():
    detector = CornerDetector().eval()
    tta = DeformableDETRWithTTA(
        detector, min_sizes=[100, 101], max_size=1000, flip=False, merge="nms", iou_threshold=0.5
    )
    (out,) = tta([{"image": torch.zeros(3, 100, 100, dtype=torch.uint8)}])
    assert len(out["instances"]) == 1  # 8x8 and ~7.9x7.9 overlap at IoU > 0.5


def test_weighted_box_fusion_averages_by_score():
    """Two views: the two boxes of class 0 overlap (IoU 0.82) and fuse into their
    score-weighted mean, scored by their mean; the class-1 box found by one view of
    two keeps its box at half its score; the class-0 box far away stays apart."""
    boxes = torch.tensor(
        [[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [0.0, 0.0, 10.0, 10.0], [50, 50, 60, 60]]
    )
    scores = torch.tensor([0.6, 0.2, 0.8, 0.4])
    classes = torch.tensor([0, 0, 1, 0])
    fused_boxes, fused_scores, fused_classes = weighted_boxes_fusion(
        boxes, scores, classes, num_views=2, iou_threshold=0.55
    )
    assert fused_classes.tolist() == [0, 1, 0]
    torch.testing.assert_close(fused_scores, torch.tensor([0.4, 0.4, 0.2]))
    torch.testing.assert_close(
        fused_boxes,
        torch.tensor([[0.25, 0.0, 10.25, 10.0], [0.0, 0.0, 10.0, 10.0], [50, 50, 60, 60]]),
    )
    empty = weighted_boxes_fusion(boxes[:0], scores[:0], classes[:0], 2, 0.55)
    assert [len(t) for t in empty] == [0, 0, 0]


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="min_sizes is empty"):
        DeformableDETRWithTTA(CornerDetector(), min_sizes=[], max_size=1, flip=True)
    with pytest.raises(ValueError, match="iou_threshold=1.5"):
        DeformableDETRWithTTA(
            CornerDetector(), min_sizes=[1], max_size=1, flip=True, iou_threshold=1.5
        )
    with pytest.raises(ValueError, match="merge='mean'; expected one of wbf, nms"):
        DeformableDETRWithTTA(CornerDetector(), min_sizes=[1], max_size=1, flip=True, merge="mean")


def test_lazy_config_switch():
    """train.test_aug: off by default; on, the wrapper with the config's values
    (what tools/lazyconfig_train_net.py evaluates with)."""
    cfg = load_config(str(SYNTHETIC.with_suffix(".py")))
    model = build_model("multi_scale")
    assert with_test_time_augmentation(model, cfg.train.test_aug) is model
    cfg = apply_overrides(
        cfg, ["train.test_aug.enabled=True", "train.test_aug.min_sizes=[320,480]"]
    )
    tta = with_test_time_augmentation(model, cfg.train.test_aug)
    assert isinstance(tta, DeformableDETRWithTTA) and tta.model is model
    assert tta.tta_mapper.min_sizes == [320, 480] and tta.tta_mapper.flip
    assert (tta.merge, tta.iou_threshold) == ("wbf", cfg.train.test_aug.iou_threshold)


def test_default_predictor_with_tta(tmp_path):
    options = ["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", 64, "TEST.AUG.MIN_SIZES", (64, 96)]
    cfg = load_yacs_config(str(SYNTHETIC.with_suffix(".yaml")), options)
    # DefaultPredictor loads weights strictly: give it those of a model of this config
    weights = tmp_path / "model.pth"
    torch.save({"model": build_yacs_model(cfg).state_dict()}, weights)
    cfg = load_yacs_config(
        str(SYNTHETIC.with_suffix(".yaml")), [*options, "MODEL.WEIGHTS", str(weights)]
    )
    predictor = DefaultPredictor(cfg)
    predictor.model = DeformableDETRWithTTA(cfg, predictor.model)
    image = np.random.default_rng(0).integers(0, 256, (80, 100, 3), dtype=np.uint8)
    instances = predictor(image)["instances"]
    assert (
        instances.image_size == (80, 100)
        and 0 < len(instances) <= cfg.MODEL.DEFORMABLE_DETR.TEST_TOPK
    )
    boxes = instances.pred_boxes.tensor
    assert (boxes >= 0).all() and (boxes[:, 2] <= 100).all() and (boxes[:, 3] <= 80).all()


@pytest.mark.slow
def test_tta_improves_ap_on_the_synthetic_set(synthetic_datasets, multiscale_model):
    """A model trained at several sizes (300 iterations, seed 0), evaluated on the
    synthetic validation set without and with TTA at two sizes plus flips (the
    config's test_aug, merged by weighted box fusion): TTA scores no lower."""
    weights, without = multiscale_model
    with_tta = eval_ap(synthetic_datasets, MULTISCALE, weights, "train.test_aug.enabled=True")
    assert without > 5.0, f"the model did not train (AP {without})"
    assert with_tta >= without, f"AP {with_tta} with TTA, {without} without"

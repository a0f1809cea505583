"""SetCriterion: hand-computed losses, weights and key suffixes of the auxiliary and
encoder sets, class-agnostic encoder targets, normalization, empty targets, gradients."""

import pytest
import torch
from detectron2.utils import comm

from deformable_detr.modeling.criterion import SetCriterion
from deformable_detr.modeling.matcher import HungarianMatcher

UNIT_WEIGHTS = {"loss_ce": 1.0, "loss_bbox": 1.0, "loss_giou": 1.0}
PAPER_WEIGHTS = {"loss_ce": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0}

# One image, K=2 classes, two queries; query 0 sits next to the target, query 1 far away.
LOGITS = [[2.0, -1.0], [-2.0, 0.5]]
PRED_BOXES = [[0.40, 0.45, 0.20, 0.20], [0.10, 0.10, 0.10, 0.10]]
TARGET_BOX = [0.55, 0.50, 0.30, 0.20]

# Focal terms with p = sigmoid(x), alpha = 0.25, gamma = 2:
#   positive: alpha * (1 - p)^2 * -log(p);  negative: (1 - alpha) * p^2 * -log(1 - p)
# x = 2.0:  p = 0.880797, positive 0.000450891, negative 1.237559
# x = -1.0: p = 0.268941, positive 0.175467,    negative 0.0169935
# x = -2.0: p = 0.119203, positive 0.412520,    negative 0.00135267
# x = 0.5:  p = 0.622459, positive 0.0168934,   negative 0.283059
# Target of class 0 matched to query 0: pos(2) + neg(-1) + neg(-2) + neg(0.5), over 1 box.
FOCAL_CLASS_0 = 0.301856
# Target of class 1 matched to query 0: neg(2) + pos(-1) + neg(-2) + neg(0.5).
FOCAL_CLASS_1 = 1.697437
# No target: neg(2) + neg(-1) + neg(-2) + neg(0.5), over max(0 boxes, 1).
FOCAL_NO_TARGET = 1.538964
# |0.40 - 0.55| + |0.45 - 0.50| + |0.20 - 0.30| + |0.20 - 0.20|
L1 = 0.3
# xyxy: prediction (0.30, 0.35, 0.50, 0.55), target (0.40, 0.40, 0.70, 0.60).
# intersection 0.10 * 0.15 = 0.015; union 0.04 + 0.06 - 0.015 = 0.085;
# enclosing 0.40 * 0.25 = 0.1; GIoU = 0.015 / 0.085 - (0.1 - 0.085) / 0.1 = 3/17 - 0.15
ONE_MINUS_GIOU = 1 - (3 / 17 - 0.15)


def _outputs(**extra):
    outputs = {
        "pred_logits": torch.tensor([LOGITS], requires_grad=True),
        "pred_boxes": torch.tensor([PRED_BOXES], requires_grad=True),
    }
    outputs.update(extra)
    return outputs


def _targets(label):
    return [{"labels": torch.tensor([label]), "boxes": torch.tensor([TARGET_BOX])}]


def _criterion(weights=UNIT_WEIGHTS):
    return SetCriterion(num_classes=2, matcher=HungarianMatcher(), weight_dict=weights)


def _copy_of_prediction_set():
    return {"pred_logits": torch.tensor([LOGITS]), "pred_boxes": torch.tensor([PRED_BOXES])}


def test_hand_computed_losses():
    losses = _criterion()(_outputs(), _targets(label=0))

    assert set(losses) == {"loss_ce", "loss_bbox", "loss_giou"}
    assert losses["loss_ce"].item() == pytest.approx(FOCAL_CLASS_0, rel=1e-5)
    assert losses["loss_bbox"].item() == pytest.approx(L1, rel=1e-5)
    assert losses["loss_giou"].item() == pytest.approx(ONE_MINUS_GIOU, rel=1e-5)


def test_losses_are_weighted():
    losses = _criterion(PAPER_WEIGHTS)(_outputs(), _targets(label=0))

    assert losses["loss_ce"].item() == pytest.approx(2.0 * FOCAL_CLASS_0, rel=1e-5)
    assert losses["loss_bbox"].item() == pytest.approx(5.0 * L1, rel=1e-5)
    assert losses["loss_giou"].item() == pytest.approx(2.0 * ONE_MINUS_GIOU, rel=1e-5)


def test_aux_and_enc_losses_have_suffixes_and_base_weights():
    outputs = _outputs(
        aux_outputs=[_copy_of_prediction_set(), _copy_of_prediction_set()],
        enc_outputs=_copy_of_prediction_set(),
    )

    losses = _criterion(PAPER_WEIGHTS)(outputs, _targets(label=0))

    expected = {
        "loss_ce": 2.0 * FOCAL_CLASS_0,
        "loss_bbox": 5.0 * L1,
        "loss_giou": 2.0 * ONE_MINUS_GIOU,
    }
    suffixes = ["", "_0", "_1", "_enc"]
    assert set(losses) == {name + suffix for name in expected for suffix in suffixes}
    for name, value in expected.items():
        for suffix in suffixes:
            assert losses[name + suffix].item() == pytest.approx(value, rel=1e-5), name + suffix


def test_enc_losses_use_class_agnostic_targets():
    # The same predictions against a class-1 target: the decoder is trained on class 1,
    # the encoder proposals on class 0, the boxes are the same.
    losses = _criterion()(_outputs(enc_outputs=_copy_of_prediction_set()), _targets(label=1))

    assert losses["loss_ce"].item() == pytest.approx(FOCAL_CLASS_1, rel=1e-5)
    assert losses["loss_ce_enc"].item() == pytest.approx(FOCAL_CLASS_0, rel=1e-5)
    assert losses["loss_bbox_enc"].item() == pytest.approx(losses["loss_bbox"].item(), rel=1e-6)
    assert losses["loss_giou_enc"].item() == pytest.approx(losses["loss_giou"].item(), rel=1e-6)


def test_losses_are_divided_by_the_number_of_boxes():
    gen = torch.Generator().manual_seed(0)
    outputs = {
        "pred_logits": torch.randn(2, 5, 3, generator=gen),
        "pred_boxes": torch.rand(2, 5, 4, generator=gen),
    }
    outputs["pred_boxes"] = outputs["pred_boxes"] * 0.3 + torch.tensor([0.35, 0.35, 0.05, 0.05])
    targets = [
        {
            "labels": torch.tensor([0, 2]),
            "boxes": torch.tensor([[0.4, 0.5, 0.2, 0.3], [0.6, 0.4, 0.1, 0.2]]),
        },
        {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.3, 0.3]])},
    ]
    criterion = SetCriterion(num_classes=3, matcher=HungarianMatcher(), weight_dict=UNIT_WEIGHTS)

    batch_losses = criterion(outputs, targets)

    # Sums over the batch (3 boxes) are the sums over its images (2 boxes, then 1):
    # every loss, the focal one over unmatched queries included, is a sum divided by num_boxes.
    for name, loss in batch_losses.items():
        per_image_sums = [
            criterion({key: value[i : i + 1] for key, value in outputs.items()}, [target])[
                name
            ].item()
            * num_boxes
            for i, (target, num_boxes) in enumerate(zip(targets, (2, 1)))
        ]
        assert loss.item() * 3 == pytest.approx(sum(per_image_sums), rel=1e-5), name


def test_num_boxes_is_averaged_over_workers(monkeypatch):
    # Two workers: this one holds 1 box, the other 3, so each divides by (1 + 3) / 2 = 2.
    def all_reduce_with_other_worker(tensor):
        tensor += 3

    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce_with_other_worker)

    losses = _criterion()(_outputs(), _targets(label=0))

    assert losses["loss_ce"].item() == pytest.approx(FOCAL_CLASS_0 / 2, rel=1e-5)
    assert losses["loss_bbox"].item() == pytest.approx(L1 / 2, rel=1e-5)
    assert losses["loss_giou"].item() == pytest.approx(ONE_MINUS_GIOU / 2, rel=1e-5)


def test_batch_without_targets():
    outputs = _outputs(
        aux_outputs=[_copy_of_prediction_set()], enc_outputs=_copy_of_prediction_set()
    )
    targets = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}]

    losses = _criterion()(outputs, targets)

    for suffix in ("", "_0", "_enc"):
        assert losses["loss_ce" + suffix].item() == pytest.approx(FOCAL_NO_TARGET, rel=1e-5)
        assert losses["loss_bbox" + suffix].item() == 0
        assert losses["loss_giou" + suffix].item() == 0
    sum(losses.values()).backward()
    assert outputs["pred_logits"].grad.abs().sum() > 0
    assert torch.equal(outputs["pred_boxes"].grad, torch.zeros(1, 2, 4))


def test_gradients_reach_logits_and_boxes():
    outputs = _outputs()

    sum(_criterion(PAPER_WEIGHTS)(outputs, _targets(label=0)).values()).backward()

    for name in ("pred_logits", "pred_boxes"):
        grad = outputs[name].grad
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    # Only the matched query 0 gets box gradients.
    assert outputs["pred_boxes"].grad[0, 0].abs().sum() > 0
    assert torch.equal(outputs["pred_boxes"].grad[0, 1], torch.zeros(4))


def test_losses_are_float32_for_low_precision_predictions():
    outputs = {k: v.detach().bfloat16() for k, v in _outputs().items()}
    expected = {k: v.float() for k, v in outputs.items()}

    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = _criterion()(outputs, _targets(label=0))
    reference = _criterion()(expected, _targets(label=0))

    for name, loss in losses.items():
        assert loss.dtype == torch.float32, name
        assert loss.item() == pytest.approx(reference[name].item(), rel=1e-6), name


def test_weight_dict_must_name_exactly_the_three_losses():
    with pytest.raises(ValueError, match="missing \\['loss_giou'\\]"):
        SetCriterion(2, HungarianMatcher(), {"loss_ce": 2.0, "loss_bbox": 5.0})
    with pytest.raises(ValueError, match="unknown \\['loss_ce_0'\\]"):
        SetCriterion(2, HungarianMatcher(), {**PAPER_WEIGHTS, "loss_ce_0": 2.0})


def test_logits_must_have_num_classes_columns():
    with pytest.raises(ValueError, match="expected 3 class logits, got 2"):
        SetCriterion(3, HungarianMatcher(), UNIT_WEIGHTS)(_outputs(), _targets(label=0))

"""DETR and DETR+: DETR's softmax loss and matching cost against hand-computed
values and a brute-force matching, softmax inference, the COCO configs (the
papers' recipes) and the shapes benchmark configs, which build and train (DETR in
float64 too) and export (Faster R-CNN: a clear error)."""

import itertools
import math
from pathlib import Path

import pytest
import torch
from detectron2.config import instantiate
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from torchvision.ops import box_convert, generalized_box_iou

from deformable_detr.config.build import build_model, load_config
from deformable_detr.config.overrides import apply_overrides
from deformable_detr.export.artefacts import export, load_artefact
from deformable_detr.modeling.criterion import SetCriterion
from deformable_detr.modeling.matcher import HungarianMatcher
from deformable_detr.modeling.meta_arch.detr import DETR
from deformable_detr.solver.schedule import resolve_schedule

from ..scripts import load_script
from .export_parity import RUN_SIZES, compare

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
COCO_TRAIN_IMAGES = 118_287
DETR_WEIGHTS = {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}

# One image, K=2 classes + no-object (3 logits), two queries; query 0 sits next to
# the target (class 0), query 1 far away, so query 0 is matched and query 1 is
# trained as no-object.
LOGITS = [[2.0, 0.0, -1.0], [0.0, 0.0, 1.0]]
PRED_BOXES = [[0.40, 0.45, 0.20, 0.20], [0.10, 0.10, 0.10, 0.10]]
TARGET_BOX = [0.55, 0.50, 0.30, 0.20]
# query 0, class 0: -log(e^2 / (e^2 + 1 + e^-1)) = 0.169846 (weight 1)
# query 1, no-object: -log(e^1 / (1 + 1 + e^1)) = 0.551445 (weight 0.1)
# weighted mean: (0.169846 + 0.1 * 0.551445) / (1 + 0.1)
SOFTMAX_CE = (0.16984601955628567 + 0.1 * 0.5514447139320511) / 1.1
# no target: both queries no-object, (0.1 * -log(e^-1 / (e^2 + 1 + e^-1)) + 0.1 * 0.551445) / 0.2
SOFTMAX_CE_NO_TARGET = 1.8606453667441685
L1 = 0.3  # as in test_criterion.py
ONE_MINUS_GIOU = 1 - (3 / 17 - 0.15)


def _softmax_criterion(**kwargs):
    matcher = HungarianMatcher(cost_class=1.0, cost_bbox=5.0, cost_giou=2.0, class_loss="softmax")
    return SetCriterion(2, matcher, DETR_WEIGHTS, class_loss="softmax", **kwargs)


def _outputs():
    return {"pred_logits": torch.tensor([LOGITS]), "pred_boxes": torch.tensor([PRED_BOXES])}


def test_softmax_losses_are_detrs_formulas():
    targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([TARGET_BOX])}]
    losses = _softmax_criterion()(_outputs(), targets)
    assert losses["loss_ce"].item() == pytest.approx(SOFTMAX_CE, rel=1e-5)
    assert losses["loss_bbox"].item() == pytest.approx(5.0 * L1, rel=1e-5)
    assert losses["loss_giou"].item() == pytest.approx(2.0 * ONE_MINUS_GIOU, rel=1e-5)


def test_softmax_loss_without_targets_trains_every_query_as_no_object():
    targets = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}]
    losses = _softmax_criterion()(_outputs(), targets)
    assert losses["loss_ce"].item() == pytest.approx(SOFTMAX_CE_NO_TARGET, rel=1e-5)
    assert losses["loss_bbox"].item() == 0 and losses["loss_giou"].item() == 0


def test_no_object_weight_is_a_parameter():
    targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([TARGET_BOX])}]
    losses = _softmax_criterion(no_object_weight=1.0)(_outputs(), targets)
    assert losses["loss_ce"].item() == pytest.approx(
        (0.16984601955628567 + 0.5514447139320511) / 2, rel=1e-5
    )


@pytest.mark.parametrize("seed", range(3))
def test_softmax_matching_is_the_brute_force_minimum(seed):
    generator = torch.Generator().manual_seed(seed)
    Q, K, T = 5, 3, 3
    logits = torch.randn(1, Q, K + 1, generator=generator)
    boxes = torch.rand(1, Q, 4, generator=generator) * 0.5 + 0.25
    targets = [
        {
            "labels": torch.randint(0, K, (T,), generator=generator),
            "boxes": torch.rand(T, 4, generator=generator) * 0.5 + 0.25,
        }
    ]
    matcher = HungarianMatcher(cost_class=1.0, cost_bbox=5.0, cost_giou=2.0, class_loss="softmax")
    queries, target_indices = matcher({"pred_logits": logits, "pred_boxes": boxes}, targets)[0]

    prob = logits[0].softmax(-1)
    giou = generalized_box_iou(
        box_convert(boxes[0], "cxcywh", "xyxy"), box_convert(targets[0]["boxes"], "cxcywh", "xyxy")
    )

    def cost(q, t):
        label = targets[0]["labels"][t]
        l1 = (boxes[0, q] - targets[0]["boxes"][t]).abs().sum()
        return float(-prob[q, label] + 5.0 * l1 - 2.0 * giou[q, t])

    best = min(
        sum(cost(q, t) for t, q in enumerate(assignment))
        for assignment in itertools.permutations(range(Q), T)
    )
    found = sum(cost(int(q), int(t)) for q, t in zip(queries, target_indices))
    assert found == pytest.approx(best, abs=1e-5)


def test_class_loss_choices_are_checked():
    with pytest.raises(ValueError, match="class_loss must be one of"):
        SetCriterion(2, HungarianMatcher(), DETR_WEIGHTS, class_loss="softmax_ce")
    with pytest.raises(ValueError, match="class_loss must be 'focal' or 'softmax'"):
        HungarianMatcher(class_loss="sigmoid")
    with pytest.raises(ValueError, match="expected 3 class logits, got 2"):
        _softmax_criterion()(
            {"pred_logits": torch.zeros(1, 2, 2), "pred_boxes": torch.rand(1, 2, 4)},
            [{"labels": torch.tensor([0]), "boxes": torch.tensor([TARGET_BOX])}],
        )


def _coco(name):
    return load_config(str(CONFIGS / "COCO" / name))


def test_coco_detr_config_is_the_detr_recipe():
    cfg = _coco("detr_r50_500ep.py")
    model = build_model(cfg, weights=None, device="cpu")
    # DETR R50: 41M parameters (DETR paper, Table 1); 81 logits (80 classes + no object)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(41.5e6, rel=0.01)
    assert model.class_embed.out_features == 81 and model.query_embed.num_embeddings == 100
    assert model.criterion.class_loss == model.criterion.matcher.class_loss == "softmax"
    assert model.criterion.class_weights[-1].item() == pytest.approx(0.1)
    matcher = model.criterion.matcher
    assert (matcher.cost_class, matcher.cost_bbox, matcher.cost_giou) == (1.0, 5.0, 2.0)
    assert model.transformer.decoder_layers[0].ffn.linear1.out_features == 2048
    cfg.optimizer.params.model = model
    lrs = {round(g["lr"], 10) for g in instantiate(cfg.optimizer).param_groups}
    assert lrs == {1e-4, 1e-5}
    # 500 epochs of 118287 images at batch 64, lr / 10 after 400
    resolve_schedule(cfg, COCO_TRAIN_IMAGES)
    assert cfg.train.max_iter == math.ceil(500 * 118287 / 64)
    assert cfg.train.checkpointer.period == math.ceil(118287 / 64)
    assert cfg.train.eval_period == math.ceil(10 * 118287 / 64)
    scheduler = instantiate(cfg.lr_multiplier)
    assert scheduler(0.79) == 1.0 and scheduler(0.81) == pytest.approx(0.1)
    assert cfg.optimizer.lr == 1e-4
    assert cfg.train.clip_max_norm == 0.1


@pytest.mark.parametrize("config", ["detr_r50_500ep.py", "detr_plus_r50_50ep.py"])
def test_coco_detr_epochs_stay_epochs_when_the_batch_changes(config):
    cfg = _coco(config)
    reference = cfg.train.lr_reference_batch_size
    cfg = apply_overrides(cfg, [f"dataloader.train.total_batch_size={reference // 2}"])
    resolve_schedule(cfg, COCO_TRAIN_IMAGES)
    assert cfg.train.max_iter == math.ceil(cfg.train.epochs * 118287 / (reference // 2))
    assert cfg.optimizer.lr == pytest.approx(1e-4 * 0.5**0.5)


def test_coco_detr_plus_config_changes_only_loss_and_queries():
    detr, plus = _coco("detr_r50_500ep.py"), _coco("detr_plus_r50_50ep.py")
    model = build_model(plus, weights=None, device="cpu")
    assert model.class_embed.out_features == 80 and model.query_embed.num_embeddings == 300
    assert model.criterion.class_loss == model.criterion.matcher.class_loss == "focal"
    resolve_schedule(plus, COCO_TRAIN_IMAGES)
    assert plus.train.max_iter == math.ceil(50 * 118287 / 32)
    assert plus.train.eval_period == math.ceil(5 * 118287 / 32)
    assert instantiate(plus.lr_multiplier)(0.81) == pytest.approx(0.1)
    assert plus.optimizer.lr == detr.optimizer.lr == 1e-4
    assert plus.model.transformer == detr.model.transformer
    assert plus.model.backbone == detr.model.backbone


def test_softmax_inference_takes_each_querys_best_object_class():
    model = build_model(load_config(str(CONFIGS / "shapes_benchmark" / "detr.py")), weights=None)
    model.test_topk = 2
    logits = torch.tensor([[[0.0, 3.0, 0.0] + [0.0] * 6, [5.0] + [0.0] * 7 + [6.0]]])
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.25, 0.25, 0.5, 0.5]]])
    scores, labels, xyxy = model.select_topk(logits, boxes)
    p = logits[0].softmax(-1)
    assert labels.tolist() == [[1, 0]]
    torch.testing.assert_close(scores[0], torch.stack([p[0, 1], p[1, 0]]))
    torch.testing.assert_close(xyxy[0, 1], torch.tensor([0.0, 0.0, 0.5, 0.5]))


def test_detr_rejects_a_criterion_of_another_class_loss():
    cfg = load_config(str(CONFIGS / "shapes_benchmark" / "detr.py"))
    cfg.model.criterion.class_loss = "focal"
    cfg.model.criterion.matcher.class_loss = "focal"
    with pytest.raises(ValueError, match="class_loss='softmax' but the criterion has 'focal'"):
        build_model(cfg, weights=None)
    assert issubclass(DETR, torch.nn.Module)


@pytest.mark.parametrize("num_classes", [None, 0, -1])
def test_detr_is_never_built_without_classes(num_classes):
    """The class count check is the base class's, shared with DeformableDETR (the raw
    instantiate: build_model would take the count from the data)."""
    cfg = load_config(str(CONFIGS / "shapes_benchmark" / "detr.py"))
    cfg.model.num_classes = num_classes
    with pytest.raises(ValueError, match="the model's class count was not resolved"):
        instantiate(cfg.model)


def _batch(num_images=2, height=96, width=128):
    batch = []
    for _ in range(num_images):
        instances = Instances((height, width))
        instances.gt_boxes = Boxes(
            torch.tensor([[8.0, 10.0, 60.0, 50.0], [70.0, 20.0, 120.0, 90.0]])
        )
        instances.gt_classes = torch.tensor([1, 5])
        image = torch.randint(0, 256, (3, height, width)).float()
        batch.append({"image": image, "instances": instances, "height": height, "width": width})
    return batch


@pytest.mark.parametrize("config", ["detr.py", "detr_plus.py", "faster_rcnn_fpn.py"])
def test_benchmark_config_builds_and_trains(config):
    """Built from its shapes-benchmark config (narrowed for speed), the model takes
    three optimizer steps on one batch: finite losses that go down, then detections."""
    cfg = load_config(str(CONFIGS / "shapes_benchmark" / config))
    if "transformer" in cfg.model:
        cfg.model.transformer.num_encoder_layers = cfg.model.transformer.num_decoder_layers = 1
    else:  # Faster R-CNN: fewer proposals and sampled RoIs
        cfg.model.proposal_generator.post_nms_topk = (100, 50)
        cfg.model.roi_heads.batch_size_per_image = 64
    model = build_model(cfg, weights=None).train()
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    batch = _batch()
    totals = []
    with EventStorage(0):
        for _ in range(3):
            losses = model(batch)
            total = sum(losses.values())
            assert torch.isfinite(total)
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
            totals.append(total.item())
    assert totals[-1] < totals[0]
    model.eval()
    with torch.no_grad():
        instances = model(batch[:1])[0]["instances"]
    assert instances.image_size == (96, 128)
    assert {"pred_boxes", "scores", "pred_classes"} <= set(instances.get_fields())


def _study_model(name):
    return build_model(load_config(str(CONFIGS / "shapes_benchmark" / name)), weights=None)


def test_a_float64_detr_computes_its_losses():
    torch.manual_seed(0)
    model = _study_model("detr.py").double().train()
    with EventStorage(0):
        losses = model(_batch(num_images=1))
    assert {loss.dtype for loss in losses.values()} == {torch.float64}
    assert all(torch.isfinite(loss) for loss in losses.values())


def test_detr_exports_as_deformable_detr_does(tmp_path):
    torch.manual_seed(0)
    model = _study_model("detr.py").eval()
    generator = torch.Generator().manual_seed(0)
    sample = torch.rand(3, 96, 128, generator=generator) * 255
    path, _ = export(model, sample, "torchscript", tmp_path)
    artefact = load_artefact(path, "torchscript")
    for size in RUN_SIZES:
        result = compare(model, artefact, size, generator)
        assert result["count"] == result["eager_count"] > 0 and result["classes_equal"], result
        assert result["boxes"] < 1e-3 and result["scores"] < 1e-5, result


def test_a_model_that_cannot_export_is_one_line_naming_it(tmp_path):
    weights = tmp_path / "faster_rcnn.pth"
    torch.save({"model": _study_model("faster_rcnn_fpn.py").state_dict()}, weights)
    with pytest.raises(SystemExit) as exit_info:
        load_script("tools/deploy/export_model.py").main(
            [
                "--config-file",
                str(CONFIGS / "shapes_benchmark" / "faster_rcnn_fpn.py"),
                "--format",
                "onnx",
                "--output",
                str(tmp_path / "out"),
                f"train.init_checkpoint={weights}",
            ]
        )
    assert str(exit_info.value.code).startswith(
        "export_model: a GeneralizedRCNN cannot be exported: the exporters trace the tensor-only "
        "inference of the DETR family (SetPredictionDetector: DeformableDETR and DETR configs)"
    )

"""The tree-crown experiment's parts: DeepForest's box precision and recall, backbone
pretraining for any detector config (tools/pretrain_backbone.py), the contestants'
configs (same tiles, epochs, pretraining and evaluation; only the model differs), the
box metrics in the study's outputs, and the whole plan at toy size (slow)."""

import json
import os

import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.structures import Boxes, Instances

from deformable_detr.config.build import load_config
from deformable_detr.engine.backbone_pretraining import (
    detector_backbone,
    pretrain_detector_backbone,
)
from deformable_detr.evaluation import BoxPrecisionRecallEvaluator, match_boxes
from deformable_detr.study import results
from deformable_detr.study.tree_crowns import TREE_CROWNS

from ..scripts import ROOT, load_script
from .coco_folder import write_coco_folder

CONFIGS = ROOT / "configs"


def _output(boxes, scores):
    instances = Instances((100, 200))
    instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    instances.scores = torch.tensor(scores, dtype=torch.float32)
    instances.pred_classes = torch.zeros(len(scores), dtype=torch.int64)
    return {"instances": instances}


def _register(name, boxes_per_image):
    records = [
        {
            "image_id": i,
            "annotations": [{"bbox": b, "bbox_mode": 0, "category_id": 0} for b in boxes],
        }
        for i, boxes in enumerate(boxes_per_image)
    ]
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    DatasetCatalog.register(name, lambda: records)


def test_match_boxes_is_one_to_one_by_intersection_area():
    """One prediction over two true boxes matches one of them only; the matching
    maximises the total intersection, not each prediction's own IoU."""
    true = torch.tensor([[0.0, 0, 10, 10], [10, 0, 20, 10]])
    ious = match_boxes(true, torch.tensor([[0.0, 0, 20, 10]]))
    assert ious.tolist() == pytest.approx([0.5])
    # greedy IoU would give the small box to the second truth; the assignment pairs
    # the large overlaps: prediction 0 -> truth 0 (area 100), prediction 1 -> truth 1 (50)
    predicted = torch.tensor([[0.0, 0, 10, 10], [10, 0, 15, 10]])
    assert sorted(match_boxes(true, predicted).tolist()) == pytest.approx([0.5, 1.0])
    assert len(match_boxes(true, torch.zeros(0, 4))) == 0


def test_box_precision_recall_as_deepforest_measures_it():
    """Image 0: 3 true boxes; predictions at IoU 1, 0.82 and 0.43 (> 0.4: matched),
    one scoring under 0.1 (left out) and one on nothing: precision 3/4, recall 3/3.
    Image 1: no prediction: recall 0, no precision. Averaged over the images."""
    _register("box_pr_test", [[[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]], [[0, 0, 5, 5]]])
    evaluator = BoxPrecisionRecallEvaluator("box_pr_test", iou_threshold=0.4, score_threshold=0.1)
    evaluator.reset()
    predictions = [
        [0, 0, 10, 10],
        [21, 0, 31, 10],
        [44, 0, 54, 10],
        [40, 0, 50, 10],
        [90, 90, 99, 99],
    ]
    evaluator.process([{"image_id": 0}], [_output(predictions, [0.9, 0.5, 0.8, 0.05, 0.9])])
    evaluator.process([{"image_id": 1}], [_output([], [])])
    result = evaluator.evaluate()["box_pr"]
    assert result["precision"] == pytest.approx(75.0)
    assert result["recall"] == pytest.approx(50.0)  # (3/3 + 0) / 2
    # a stricter IoU drops the 0.43 match
    evaluator = BoxPrecisionRecallEvaluator("box_pr_test", iou_threshold=0.5)
    evaluator.process([{"image_id": 0}], [_output(predictions, [0.9, 0.5, 0.8, 0.05, 0.9])])
    assert evaluator.evaluate()["box_pr"]["precision"] == pytest.approx(50.0)


def test_the_study_outputs_carry_the_box_metrics(tmp_path):
    metrics = tmp_path / "metrics.json"
    evaluation = {f"bbox/{m}": 30.0 for m in results.METRICS}
    evaluation.update({"iteration": 9, "box_pr/precision": 61.0, "box_pr/recall": 72.5})
    metrics.write_text(json.dumps({"iteration": 5, "time": 0.5}) + "\n" + json.dumps(evaluation))
    evaluations = results.read_evaluations(str(metrics), 10, 10)
    assert evaluations[0]["AP"] == 30.0
    assert (evaluations[0]["precision"], evaluations[0]["recall"]) == (61.0, 72.5)
    runs = [{"name": "a", "label": "A", "evaluations": evaluations}]
    table = results.table(runs)
    assert "| box precision | box recall |" in table and "| 61.0 | 72.5 |" in table
    results.write_evaluations_csv(str(tmp_path / "e.csv"), runs)
    assert (tmp_path / "e.csv").read_text().splitlines()[0].endswith("APl,precision,recall")
    # without them, the study's table keeps its columns
    del evaluations[0]["precision"], evaluations[0]["recall"]
    assert "precision" not in results.table(runs)


def _tree_configs():
    return {
        c.name: load_config(str(CONFIGS / c.config), list(c.overrides))
        for c in TREE_CROWNS.contestants
    }


def test_the_contestants_differ_in_their_model_and_seed_only():
    """Every contestant trains on the same tiles for the same epochs at the same batch
    from the same pretrained backbone (but the run that measures the pretraining), and
    is evaluated on the whole validation image by the same sliced inference, with COCO
    AP over up to 1000 detections and DeepForest's measure at IoU 0.4."""
    configs = _tree_configs()
    first = configs["faster_rcnn_fpn"]
    for name, cfg in configs.items():
        for key in (
            "dataloader.train.dataset",
            "dataloader.test.dataset",
            "train.sliced_inference",
        ):
            assert cfg[key.split(".")[0]][key.split(".", 1)[1].split(".")[0]] is not None
        assert cfg.dataloader.train.dataset == first.dataloader.train.dataset
        assert cfg.dataloader.test.dataset == first.dataloader.test.dataset
        assert cfg.dataloader.train.mapper == first.dataloader.train.mapper
        assert cfg.dataloader.train.total_batch_size == first.dataloader.train.total_batch_size
        assert cfg.train.epochs == first.train.epochs
        assert cfg.train.sliced_inference == first.train.sliced_inference
        assert cfg.train.sliced_inference.enabled
        coco, box_pr = cfg.dataloader.evaluator
        assert coco.max_dets_per_image == 1000
        assert box_pr.iou_threshold == 0.4 and box_pr.score_threshold == 0.1
        assert cfg.train.seed == (1 if name.endswith("seed1") else 0)
        pretrained = next(c.pretrained for c in TREE_CROWNS.contestants if c.name == name)
        assert bool(cfg.train.init_checkpoint) == pretrained
    # about 100 crowns fit in a window: every model keeps 300 detections per window
    assert first.model.roi_heads.box_predictor.test_topk_per_image == 300
    assert configs["deformable_detr"].model.test_topk == 300
    assert configs["deformable_detr_two_stage"].model.two_stage


def test_detector_backbone_is_the_pyramid_s_bottom_up_or_the_backbone():
    configs = _tree_configs()
    frcnn, ddetr = configs["faster_rcnn_fpn"].model, configs["deformable_detr"].model
    assert detector_backbone(frcnn) is frcnn.backbone.bottom_up
    assert detector_backbone(ddetr) is ddetr.backbone
    # the same network, of which the pyramid also reads res2
    assert detector_backbone(frcnn).stages == detector_backbone(ddetr).stages


@pytest.fixture(scope="module")
def coco_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    return {
        split: write_coco_folder(root, split, 4, seed) for split, seed in (("train", 0), ("val", 1))
    }


def _data_overrides(coco_folder):
    return [
        f"dataloader.{loader}.dataset.{key}={value}"
        for loader, split in (("train", "train"), ("test", "val"))
        for key, value in zip(("json_file", "image_root"), coco_folder[split])
    ]


def test_pretrain_backbone_tool_writes_a_backbone_for_the_detector(tmp_path, coco_folder, capsys):
    """tools/pretrain_backbone.py on a custom config and its data: the checkpoint holds
    the model's backbone parameters (loaded by detectron2's matching heuristics), and
    the crop accuracies are written beside it."""
    tool = load_script("tools/pretrain_backbone.py")
    output = tmp_path / "backbone.pth"
    config = str(CONFIGS / "custom" / "deformable_detr_tiny_custom.py")
    tool.main(
        ["--config-file", config, "--output", str(output), *_data_overrides(coco_folder)]
        + ["backbone_pretraining.epochs=1", "backbone_pretraining.batch_size=8"]
    )
    assert f"train.init_checkpoint={output}" in capsys.readouterr().out
    checkpoint = torch.load(output, weights_only=True)
    assert checkpoint["matching_heuristics"] is True
    from deformable_detr.config.build import build_model

    cfg = load_config(config, _data_overrides(coco_folder))
    backbone = build_model(cfg, weights=None, class_names=["bar", "ring"]).backbone
    assert set(checkpoint["model"]) == set(backbone.state_dict())
    record = json.loads(output.with_suffix(".json").read_text())
    assert record["labels"] == 3 and record["train_crops"] > 4  # bar, ring, background


def test_pretrain_backbone_tool_errors_are_one_line(tmp_path, coco_folder):
    tool = load_script("tools/pretrain_backbone.py")
    output = str(tmp_path / "b.pth")
    synthetic = str(CONFIGS / "synthetic" / "deformable_detr_tiny.py")  # no settings
    with pytest.raises(SystemExit, match="no backbone_pretraining settings"):
        tool.main(["--config-file", synthetic, "--output", output])
    yacs = str(CONFIGS / "custom" / "deformable_detr_tiny_custom.yaml")
    with pytest.raises(SystemExit, match="yacs config"):
        tool.main(["--config-file", yacs, "--output", output])
    custom = str(CONFIGS / "custom" / "deformable_detr_tiny_custom.py")
    with pytest.raises(SystemExit, match="backbone_pretraining.epoch"):
        tool.main(["--config-file", custom, "--output", output, "backbone_pretraining.epoch=1"])
    assert not os.path.exists(output)


@pytest.mark.slow
def test_the_tree_plan_at_toy_size_trains_measures_and_draws(tmp_path, coco_folder):
    """Faster R-CNN and Deformable DETR of the tree plan on a toy dataset, a few
    iterations each from one pretrained backbone: their evaluations carry COCO AP and
    the box precision/recall of the whole (sliced) validation images, the table has
    both, and the figure has one panel per model."""
    from dataclasses import replace

    from deformable_detr.study.plan import Plan
    from deformable_detr.study.study import run_study
    from deformable_detr.study.tree_crowns import draw_predictions

    toy = [*_data_overrides(coco_folder), "train.max_iter=4", "train.eval_period=4"]
    toy += ["train.checkpointer.period=4", "train.log_period=1", "train.device=cpu"]
    contestants = tuple(
        replace(c, overrides=(*c.overrides, *toy)) for c in TREE_CROWNS.contestants[:2]
    )
    plan = Plan(contestants, TREE_CROWNS.pretraining_config)
    output = tmp_path / "trees"
    pretraining = load_config(
        str(CONFIGS / plan.pretraining_config),
        [*_data_overrides(coco_folder), "backbone_pretraining.epochs=1"],
    )
    pretrain_detector_backbone(pretraining, str(output / "backbone" / "pretrained.pth"))
    runs = run_study(
        str(CONFIGS),
        str(ROOT / "tools" / "lazyconfig_train_net.py"),
        str(output),
        num_inference_images=1,
        plan=plan,
    )
    assert [r["name"] for r in runs] == ["faster_rcnn_fpn", "deformable_detr"]
    for run in runs:
        assert run["complete"]
        last = run["evaluations"][-1]
        assert 0.0 <= last["recall"] <= 100.0 and 0.0 <= last["AP"] <= 100.0
    assert "box recall" in (output / "table.md").read_text()
    figure = output / "validation.jpg"
    counts = draw_predictions(str(CONFIGS), str(output), contestants, str(figure), 0.0)
    import cv2

    assert cv2.imread(str(figure)).shape[1] == 2 * 96 and len(counts) == 2


def test_seed_summary_averages_each_model_over_its_seeds():
    from deformable_detr.study.tree_crowns import seed_summary

    def run(name, label, ap, recall):
        return {"name": name, "label": label, "evaluations": [{"AP": ap, "recall": recall}]}

    runs = [
        run("faster_rcnn_fpn", "Faster R-CNN", 30.0, 70.0),
        run("deformable_detr", "Deformable DETR", 20.0, 60.0),
        run("faster_rcnn_fpn_seed1", "Faster R-CNN (seed 1)", 32.0, 74.0),
    ]
    lines = seed_summary(runs).splitlines()
    assert lines[2].startswith("| Faster R-CNN | 2 | 31.0 (30.0, 32.0) |")
    assert "| 72.0 (70.0, 74.0) |" in lines[2]
    assert lines[3].startswith("| Deformable DETR | 1 | 20.0 |") and len(lines) == 4


def test_epochs_are_counted_in_epochs_when_evaluations_are_every_few_epochs():
    """The trees evaluate every 4 epochs: 64 tiles at batch 2 are 32 iterations per
    epoch, not one evaluation period (128)."""
    from deformable_detr.solver.schedule import resolve_schedule
    from deformable_detr.study.measure import iterations_per_epoch

    cfg = _tree_configs()["deformable_detr"]
    resolve_schedule(cfg, 64)
    assert cfg.train.eval_period == 128 and iterations_per_epoch(cfg) == 32
    assert cfg.train.max_iter == 24 * 32

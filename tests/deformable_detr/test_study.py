"""The study: its schedule and --quick overrides, evaluations read back from
metrics.json, the table; and tools/study.py --quick end to end (every contestant
trained through tools/lazyconfig_train_net.py, evaluated every epoch, measured,
the CSV/JSON, table and plot written), skipping finished runs and continuing an
interrupted one from its checkpoint."""

import csv
import json
import os
import subprocess
import sys

import pytest
import torch
from detectron2.config import instantiate

from deformable_detr.config.build import load_config
from deformable_detr.config.overrides import apply_overrides
from deformable_detr.data.shapes_benchmark import QUICK as QUICK_DATASET
from deformable_detr.solver.schedule import resolve_schedule
from deformable_detr.study import CONTESTANTS, QUICK, runner, study
from deformable_detr.study.plan import select
from deformable_detr.study.results import METRICS, read_evaluations, table

from ..scripts import ROOT
from ..train_net_runs import environment


def test_benchmark_configs_follow_the_schedule_rule():
    """DETR gets 10x the epochs of the others; every run evaluates and checkpoints
    once per epoch and drops the lr after 80% of its epochs (the iterations follow
    from the data at train time: tests/deformable_detr/test_configs.py)."""
    epochs = {}
    for contestant in CONTESTANTS:
        cfg = load_config(str(ROOT / "configs" / contestant.config))
        assert cfg.train.checkpoint_epochs == cfg.train.eval_epochs == 1
        assert cfg.train.max_iter is cfg.train.eval_period is cfg.train.checkpointer.period is None
        scheduler = instantiate(cfg.lr_multiplier)
        assert scheduler(0.799) == 1.0 and scheduler(0.801) == pytest.approx(0.1)
        epochs[contestant.name] = cfg.train.epochs
    assert epochs.pop("detr") == 10 * epochs["deformable_detr"]
    assert len(set(epochs.values())) == 1


def test_quick_overrides_apply_to_every_config():
    for contestant in CONTESTANTS:
        cfg = load_config(str(ROOT / "configs" / contestant.config))
        cfg = apply_overrides(cfg, QUICK.overrides(contestant.name))
        assert cfg.dataloader.train.dataset.dataset_name == QUICK.train_dataset
        assert cfg.dataloader.evaluator.dataset_name == QUICK.val_dataset
        resolve_schedule(cfg, QUICK_DATASET["num_train"])
        assert cfg.train.max_iter == (8 if contestant.name == "detr" else 4)
        assert cfg.train.eval_period == cfg.train.checkpointer.period == 4


def test_a_rerun_study_skips_finished_runs_and_continues_an_interrupted_one(
    tmp_path, monkeypatch, capsys
):
    """Of three runs, the finished one (its last checkpoint is the final one) is not
    trained again; the interrupted one is started with --resume in its own directory,
    its checkpoints in place, so the training continues from the last one; the missing
    one is started (--resume starts a run without checkpoints from scratch)."""
    output = tmp_path / "study"
    finished, interrupted = output / "runs" / "detr", output / "runs" / "detr_plus"
    for run_dir, last in ((finished, "model_final.pth"), (interrupted, "model_0000299.pth")):
        run_dir.mkdir(parents=True)
        (run_dir / "last_checkpoint").write_text(last)
    started = []

    def train_net(command):  # what tools/lazyconfig_train_net.py leaves behind
        run_dir = next(a for a in command if a.startswith("train.output_dir=")).split("=", 1)[1]
        last = os.path.join(run_dir, "last_checkpoint")
        started.append((command, open(last).read() if os.path.exists(last) else None))
        os.makedirs(run_dir, exist_ok=True)
        with open(last, "w") as f:
            f.write(runner.FINAL_CHECKPOINT)
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(runner.subprocess, "run", train_net)
    pretrained = str(tmp_path / "pretrained.pth")
    monkeypatch.setattr(study, "pretrained_backbone", lambda *args: pretrained)
    monkeypatch.setattr(study, "_config", lambda *args: None)
    monkeypatch.setattr(study, "measure", lambda *args: {})
    monkeypatch.setattr(study, "write_outputs", lambda *args: [])
    configs, only = str(ROOT / "configs"), ["detr", "detr_plus", "deformable_detr"]
    study.run_study(configs, "train_net.py", str(output), only=only)

    assert "DETR (complete, not retrained)" in capsys.readouterr().out
    expected = [
        ("detr_plus", "model_0000299.pth"),  # continued from its last checkpoint
        ("deformable_detr", None),  # started
    ]
    assert len(started) == len(expected)
    for (command, last_checkpoint), (name, expected_last) in zip(started, expected):
        config = next(c.config for c in CONTESTANTS if c.name == name)
        assert command[1:5] == ["train_net.py", "--config-file", f"{configs}/{config}", "--resume"]
        assert f"train.output_dir={output / 'runs' / name}" in command
        assert f"train.init_checkpoint={pretrained}" in command
        assert last_checkpoint == expected_last


def test_unknown_contestant_is_named():
    with pytest.raises(ValueError, match=r"unknown contestant\(s\) \['detr2'\]"):
        select(["detr", "detr2"])


def test_evaluations_by_epoch_count_a_resumed_runs_repeat_once(tmp_path):
    lines = [
        {"iteration": 3, "total_loss": 2.0, "time": 0.5},
        {"iteration": 3, "bbox/AP": 1.0, **{f"bbox/{m}": 1.0 for m in METRICS}},
        {"iteration": 3, "bbox/AP": 2.0, **{f"bbox/{m}": 2.0 for m in METRICS[1:]}},  # resumed
        {"iteration": 8, "bbox/AP": 3.0, **{f"bbox/{m}": 3.0 for m in METRICS[1:]}},  # final
    ]
    path = tmp_path / "metrics.json"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    evaluations = read_evaluations(str(path), iterations_per_epoch=4, max_iter=8)
    assert [(e["epoch"], e["AP"]) for e in evaluations] == [(1, 2.0), (2, 3.0)]
    row = table([{"label": "X", "evaluations": evaluations, "measurements": {}}]).splitlines()[-1]
    assert row.startswith("| X | 2 | 3.0 | 3.0 |") and row.endswith("| - | - | - | - |")


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory):
    datasets = tmp_path_factory.mktemp("datasets")
    output = tmp_path_factory.mktemp("study")
    result = _study(datasets, output)
    return datasets, output, result


def _study(datasets, output, *args):
    command = [sys.executable, str(ROOT / "tools" / "study.py"), "--quick", "--output", str(output)]
    result = subprocess.run(
        command + list(args),
        env=environment(datasets),
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result.stdout + result.stderr


@pytest.mark.slow
def test_quick_study_writes_every_result(quick_study):
    _, output, log = quick_study
    for index, contestant in enumerate(CONTESTANTS, 1):
        assert f"[study] run {index}/7: {contestant.label} (training)" in log
    assert "eta:" in log  # detectron2's progress line of each run
    with open(output / "evaluations.csv") as f:
        rows = list(csv.DictReader(f))
    epochs = {}
    for row in rows:
        epochs.setdefault(row["contestant"], []).append(float(row["epoch"]))
        assert all(0 <= float(row[m]) <= 100 for m in ("AP", "AP50", "AP75"))
        # NaN where the 2 validation images have no object of that size
        assert all(not 0 > float(row[m]) and not float(row[m]) > 100 for m in ("APs", "APm", "APl"))
    assert epochs == {c.name: [1.0, 2.0] if c.name == "detr" else [1.0] for c in CONTESTANTS}
    runs = json.loads((output / "results.json").read_text())
    for run in runs:
        m = run["measurements"]
        assert run["complete"] and m["parameters"] > 1e6 and m["flops"] > 1e8
        assert m["train_seconds_per_epoch"] > 0 and m["inference_images_per_second"] > 0
    lines = (output / "table.md").read_text().splitlines()
    assert len(lines) == 2 + len(CONTESTANTS) and lines[2].startswith("| Faster R-CNN + FPN | 1 |")
    assert (output / "ap_vs_epochs.png").read_bytes()[:4] == b"\x89PNG"
    for contestant in CONTESTANTS:
        assert (output / "runs" / contestant.name / "model_final.pth").exists()
    # one pretrained backbone, loaded by every contestant
    assert "backbone pretraining: epoch 1/1" in log
    record = json.loads((output / "backbone" / "pretrained.json").read_text())
    assert record["labels"] == 9 and record["train_crops"] > 4  # 8 classes + background
    for contestant in CONTESTANTS:
        run_log = (output / "runs" / contestant.name / "log.txt").read_text()
        assert f"Loading from {output / 'backbone' / 'pretrained.pth'}" in run_log, contestant.name


@pytest.mark.slow
@pytest.mark.parametrize("name", ["deformable_detr", "faster_rcnn_fpn"])
def test_the_pretrained_backbone_loads_into_detr_models_and_the_feature_pyramid(quick_study, name):
    """The pretraining's checkpoint names the ResNet's own parameters: they load,
    by detectron2's matching heuristics, into model.backbone and into Faster
    R-CNN's model.backbone.bottom_up."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import instantiate

    _, output, _ = quick_study
    path = output / "backbone" / "pretrained.pth"
    expected = torch.load(path, weights_only=True)["model"]
    cfg = load_config(str(ROOT / "configs" / "shapes_benchmark" / f"{name}.py"))
    model = instantiate(cfg.model).train()
    DetectionCheckpointer(model).load(str(path))
    backbone = model.backbone.bottom_up if name == "faster_rcnn_fpn" else model.backbone
    state = backbone.state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], v) for k, v in expected.items())


def test_object_crops_are_objects_and_background(tmp_path):
    """One crop per object, labelled with its class, then up to two background
    crops per image, labelled 8 (the number of classes)."""
    from detectron2.data import DatasetCatalog

    from deformable_detr.data.shapes_benchmark import QUICK as QUICK_DATASET
    from deformable_detr.data.shapes_benchmark import register_shapes_benchmark
    from deformable_detr.engine.backbone_pretraining import object_crops

    names = ("crops_test_train", "crops_test_val")
    register_shapes_benchmark(names, root=str(tmp_path), **QUICK_DATASET)
    crops, labels = object_crops(names[0], 32, 0.2, 2, seed=0)
    records = DatasetCatalog.get(names[0])
    classes = [a["category_id"] for r in records for a in r["annotations"]]
    assert crops.shape[1:] == (3, 32, 32) and crops.dtype == torch.uint8
    assert len(classes) <= len(labels) <= len(classes) + 2 * len(records)
    assert sorted(labels[labels < 8].tolist()) == sorted(classes)
    assert (labels[labels >= 8] == 8).all()

"""tools/lazyconfig_train_net.py end to end on the synthetic data: a few
iterations with evaluation, resuming from the saved iteration, evaluation only,
and DefaultPredictor on the checkpoint it wrote."""
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "synthetic" / "deformable_detr_tiny.py"


def _train_net(tmp_path, *overrides, flags=()):
    env = dict(os.environ, D2EXT_DATASETS=str(tmp_path / "datasets"))
    script = ROOT / "tools" / "lazyconfig_train_net.py"
    command = [sys.executable, str(script), "--config-file", str(CONFIG), *flags, *overrides]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result.stdout + result.stderr


def _iterations(output_dir):
    lines = (output_dir / "metrics.json").read_text().splitlines()
    return [json.loads(line)["iteration"] for line in lines if '"total_loss"' in line]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("train")
    output_dir = tmp_path / "output"
    common = [
        f"train.output_dir={output_dir}",
        "train.checkpointer.period=3",
        "train.log_period=1",
        "dataloader.train.total_batch_size=2",
        "dataloader.train.num_workers=0",
        "dataloader.test.num_workers=0",
    ]
    log = _train_net(tmp_path, *common, "train.max_iter=3", "train.eval_period=3")
    return tmp_path, output_dir, common, log


def test_trains_and_evaluates(trained):
    _, output_dir, _, log = trained
    assert (output_dir / "model_final.pth").exists()
    assert _iterations(output_dir) == [0, 1, 2]
    assert "Evaluation results for bbox" in log
    assert "copypaste: AP,AP50,AP75,APs,APm,APl" in log


def test_resume_continues_from_the_saved_iteration(trained):
    tmp_path, output_dir, common, _ = trained
    log = _train_net(tmp_path, *common, "train.max_iter=5", "train.eval_period=0", flags=["--resume"])
    assert "Resuming from" in log or "Loading from" in log
    assert _iterations(output_dir)[-2:] == [3, 4]


def test_eval_only(trained):
    tmp_path, output_dir, common, _ = trained
    checkpoint = f"train.init_checkpoint={output_dir / 'model_final.pth'}"
    log = _train_net(tmp_path, *common, checkpoint, flags=["--eval-only"])
    assert "copypaste: AP,AP50,AP75,APs,APm,APl" in log


def test_default_predictor_on_the_checkpoint(trained):
    from detectron2.config import get_cfg
    from detectron2.engine import DefaultPredictor

    from deformable_detr import add_deformable_detr_config

    tmp_path, output_dir, _, _ = trained
    cfg = get_cfg()
    add_deformable_detr_config(cfg)
    cfg.merge_from_file(str(ROOT / "configs" / "synthetic" / "deformable_detr_tiny.yaml"))
    cfg.MODEL.WEIGHTS = str(output_dir / "model_final.pth")
    cfg.MODEL.DEVICE = "cpu"
    predictor = DefaultPredictor(cfg)
    image_path = next((tmp_path / "datasets" / "synthetic_shapes" / "val").glob("*.jpg"))
    instances = predictor(cv2.imread(str(image_path)))["instances"]
    assert len(instances) == 30
    height, width = cv2.imread(str(image_path)).shape[:2]
    assert instances.image_size == (height, width)
    assert (instances.pred_classes < 3).all()
    # the predictor loaded the trained weights, not a fresh initialisation
    trained_state = torch.load(output_dir / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    name = "class_embed.0.bias"
    torch.testing.assert_close(predictor.model.state_dict()[name], trained_state[name])


def test_two_cpu_workers(trained):
    """detectron2's launch with two processes (gloo): DDP on CPU and the criterion's
    box count all-reduced over workers."""
    tmp_path = trained[0]  # its generated dataset
    output_dir = tmp_path / "output_two_workers"
    _train_net(
        tmp_path,
        f"train.output_dir={output_dir}",
        "train.max_iter=2",
        "train.eval_period=0",
        "train.log_period=1",
        "dataloader.train.total_batch_size=4",
        "dataloader.train.num_workers=0",
        flags=["--num-gpus", "2"],
    )
    assert _iterations(output_dir) == [0, 1]
    assert (output_dir / "model_final.pth").exists()

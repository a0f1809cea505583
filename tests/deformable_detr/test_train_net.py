"""tools/lazyconfig_train_net.py end to end on the synthetic data: a few
iterations with evaluation, resuming from the saved iteration, evaluation only,
and DefaultPredictor on the checkpoint it wrote."""

import cv2
import pytest
import torch

from ..train_net_runs import ROOT, train_net
from ..train_net_runs import iterations as _iterations

pytestmark = pytest.mark.slow  # every test here trains or runs a tool end to end

FREED_MEMORY_KEPT = "malloc keeps the memory it frees for reuse"  # engine.host_memory


def _train_net(datasets, *overrides, flags=()):
    return train_net(datasets, *flags, *overrides)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synthetic_datasets):
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
    log = _train_net(synthetic_datasets, *common, "train.max_iter=3", "train.eval_period=3")
    return synthetic_datasets, output_dir, common, log


def test_trains_and_evaluates(trained):
    _, output_dir, _, log = trained
    assert (output_dir / "model_final.pth").exists()
    assert _iterations(output_dir) == [0, 1, 2]
    assert "Evaluation results for bbox" in log
    assert "copypaste: AP,AP50,AP75,APs,APm,APl" in log
    assert FREED_MEMORY_KEPT in log  # train.device=cpu


def test_resume_continues_from_the_saved_iteration(trained):
    datasets, output_dir, common, _ = trained
    log = _train_net(
        datasets, *common, "train.max_iter=5", "train.eval_after_train=False", flags=["--resume"]
    )
    assert "Resuming from" in log or "Loading from" in log
    assert _iterations(output_dir)[-2:] == [3, 4]


def test_eval_only(trained):
    datasets, output_dir, common, _ = trained
    checkpoint = f"train.init_checkpoint={output_dir / 'model_final.pth'}"
    log = _train_net(
        datasets, *common, checkpoint, "train.reuse_freed_memory=False", flags=["--eval-only"]
    )
    assert "copypaste: AP,AP50,AP75,APs,APm,APl" in log
    assert FREED_MEMORY_KEPT not in log


def test_default_predictor_on_the_checkpoint(trained):
    from detectron2.engine import DefaultPredictor

    from deformable_detr import load_yacs_config

    datasets, output_dir, _, _ = trained
    cfg = load_yacs_config(
        str(ROOT / "configs" / "synthetic" / "deformable_detr_tiny.yaml"),
        ["MODEL.WEIGHTS", str(output_dir / "model_final.pth"), "MODEL.DEVICE", "cpu"],
    )
    predictor = DefaultPredictor(cfg)
    image_path = next((datasets / "synthetic_shapes" / "val").glob("*.jpg"))
    instances = predictor(cv2.imread(str(image_path)))["instances"]
    assert len(instances) == 30
    height, width = cv2.imread(str(image_path)).shape[:2]
    assert instances.image_size == (height, width)
    assert (instances.pred_classes < 3).all()
    # the predictor loaded the trained weights, not a fresh initialisation
    trained_state = torch.load(
        output_dir / "model_final.pth", map_location="cpu", weights_only=False
    )["model"]
    name = "class_embed.0.bias"
    torch.testing.assert_close(predictor.model.state_dict()[name], trained_state[name])


def test_two_cpu_workers(trained):
    """detectron2's launch with two processes (gloo): DDP on CPU and the criterion's
    box count all-reduced over workers."""
    datasets = trained[0]
    output_dir = trained[1].parent / "output_two_workers"
    _train_net(
        datasets,
        f"train.output_dir={output_dir}",
        "train.max_iter=2",
        "train.eval_after_train=False",
        "train.log_period=1",
        "dataloader.train.total_batch_size=4",
        "dataloader.train.num_workers=0",
        flags=["--num-gpus", "2"],
    )
    assert _iterations(output_dir) == [0, 1]
    assert (output_dir / "model_final.pth").exists()

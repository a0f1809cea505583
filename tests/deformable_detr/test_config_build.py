"""One rule per job for every tool (deformable_detr.config.build, deformable_detr.data.build):
each tool loads its config through load_config, so each takes key=value (and KEY VALUE
pairs or KEY=VALUE for yacs) and refuses a mistyped key naming the closest one; a yacs
config takes its class count from its data as a LazyConfig does; the yacs files declare
their version."""

import logging
import subprocess
import sys

import cv2
import numpy as np
import pytest

from deformable_detr.checkpoint import converter
from deformable_detr.checkpoint.converter import read_official
from deformable_detr.config.build import ConfigKindError, build_model, load_config
from deformable_detr.config.overrides import ConfigOverrideError
from deformable_detr.data.coco_json import DatasetError
from deformable_detr.study.study import _config as study_config

from ..scripts import ROOT, load_script
from .coco_folder import CLASS_NAMES, write_coco_folder

LAZY = str(ROOT / "configs" / "synthetic" / "deformable_detr_tiny.py")
YACS = str(ROOT / "configs" / "synthetic" / "deformable_detr_tiny.yaml")
YACS_CUSTOM = str(ROOT / "configs" / "custom" / "deformable_detr_tiny_custom.yaml")


def _demo(config, overrides, tmp_path):
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    load_script("demo/demo.py").main(
        ["--config-file", config, "--input", str(image), "--output", str(tmp_path / "out")]
        + ["--device", "cpu", "--opts", *overrides]
    )


def _export_model(config, overrides, tmp_path):
    load_script("tools/deploy/export_model.py").main(
        ["--config-file", config, "--format", "onnx", "--output", str(tmp_path), *overrides]
    )


def _analyze_model(config, overrides, tmp_path):
    load_script("tools/analyze_model.py").main(["--config-file", config, *overrides])


def _train_net(config, overrides, tmp_path):
    train_net = load_script("tools/lazyconfig_train_net.py")
    train_net.main(train_net.parse_args(["--config-file", config, *overrides]))


def _benchmark_precision(config, overrides, tmp_path):
    load_script("tools/benchmark_precision.py").main(["--config-file", config, *overrides])


def _convert_official(config, overrides, tmp_path):
    argv = ["--config-file", config, "in.pth", str(tmp_path / "out.pth"), *overrides]
    converter.main(read_official, "", argv)


def _study(config, overrides, tmp_path):
    study_config(config, tuple(overrides))


def _id(value):
    if callable(value):
        return value.__name__.lstrip("_")
    return {LAZY: "py", YACS: "yaml"}.get(value) if isinstance(value, str) else None


def _error(tool, config, overrides, tmp_path) -> str:
    """The message the tool stops with (an exception, or its exit message)."""
    with pytest.raises((Exception, SystemExit)) as info:
        tool(config, overrides, tmp_path)
    return str(info.value)


@pytest.mark.parametrize(
    "tool, config, overrides, closest",
    [
        (_train_net, LAZY, ["train.max_iters=5"], "train.max_iter"),
        (_demo, LAZY, ["train.init_checkpont=m.pth"], "train.init_checkpoint"),
        (_demo, YACS, ["MODEL.WIEGHTS=m.pth"], "MODEL.WEIGHTS"),
        (_demo, YACS, ["MODEL.WIEGHTS", "m.pth"], "MODEL.WEIGHTS"),
        (_export_model, LAZY, ["train.init_checkpont=m.pth"], "train.init_checkpoint"),
        (_export_model, YACS, ["MODEL.DEVICE", "cpu", "MODEL.WIEGHTS", "m.pth"], "MODEL.WEIGHTS"),
        (_analyze_model, YACS, ["INPUT.FORMT=BGR"], "INPUT.FORMAT"),
        (_benchmark_precision, LAZY, ["model.num_querys=7"], "model.num_queries"),
        (_convert_official, YACS, ["SOLVER.BASE_LRR=1"], "SOLVER.BASE_LR"),
        (_study, LAZY, ["train.max_iters=5"], "train.max_iter"),
    ],
    ids=_id,
)
def test_every_tool_refuses_a_mistyped_key_naming_the_closest(
    tool, config, overrides, closest, tmp_path
):
    message = _error(tool, config, overrides, tmp_path)
    assert "the config has no key" in message and f"did you mean {closest}" in message, message


@pytest.mark.parametrize(
    "tool, config, overrides",
    [
        (_demo, LAZY, ["train.init_checkpoint={weights}"]),
        (_demo, YACS, ["MODEL.WEIGHTS={weights}"]),
        (_demo, YACS, ["MODEL.WEIGHTS", "{weights}"]),
        (_export_model, LAZY, ["train.init_checkpoint={weights}"]),
        (_export_model, YACS, ["MODEL.WEIGHTS={weights}"]),
        (_export_model, YACS, ["MODEL.WEIGHTS", "{weights}"]),
    ],
    ids=_id,
)
def test_every_tool_takes_the_weights_override_of_either_config(tool, config, overrides, tmp_path):
    """The override reaches the model: the weights file it names is the one found missing."""
    weights = str(tmp_path / "missing.pth")
    message = _error(tool, config, [o.format(weights=weights) for o in overrides], tmp_path)
    assert f"{weights}: no such weights file" in message, message


@pytest.mark.parametrize("tool", [_train_net, _benchmark_precision], ids=_id)
def test_a_lazyconfig_tool_refuses_a_yacs_config_naming_its_twin(tool, tmp_path):
    """Not an AttributeError from deep inside the tool: which kind it takes, and the twin."""
    message = _error(tool, YACS_CUSTOM, [], tmp_path)
    assert f"{YACS_CUSTOM} is a yacs config" in message, message
    assert "LazyConfig files only" in message and "demo/demo.py" in message, message
    assert f"twin {YACS_CUSTOM.removesuffix('.yaml')}.py" in message, message


def test_load_config_lazy_only_takes_a_dumped_lazy_config_and_refuses_yacs():
    dumped = ROOT / "tests" / "deformable_detr" / "dumped_configs" / "deformable_detr_tiny.yaml"
    assert "_target_" in load_config(str(dumped), lazy_only=True).model
    with pytest.raises(ConfigKindError, match="is a yacs config"):
        load_config(YACS, lazy_only=True)


def test_train_net_stops_on_a_yacs_config_with_one_line():
    command = [sys.executable, str(ROOT / "tools" / "lazyconfig_train_net.py")]
    result = subprocess.run(
        [*command, "--config-file", YACS_CUSTOM], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {YACS_CUSTOM} is a yacs config"), lines


def test_a_yacs_custom_config_takes_its_class_count_from_the_json(tmp_path):
    """configs/custom/*.yaml leave MODEL.DEFORMABLE_DETR.NUM_CLASSES at 0: build_model (so
    export_model and analyze_model) takes the JSON's categories, as for a LazyConfig."""
    json_file, images = write_coco_folder(tmp_path, "train", 1, seed=0)
    data = [f"DATASETS.TRAIN_JSON={json_file}", f"DATASETS.TRAIN_IMAGE_ROOT={images}"]
    model = build_model(load_config(YACS_CUSTOM, data), weights=None, device="cpu")
    assert model.num_classes == len(CLASS_NAMES) == 2
    assert model.class_embed[0].out_features == 2
    cfg = load_config(YACS_CUSTOM, [*data, "MODEL.DEFORMABLE_DETR.NUM_CLASSES=5"])
    with pytest.raises(DatasetError, match=r"NUM_CLASSES=5, but .*train.json has 2 categories"):
        build_model(cfg, weights=None, device="cpu")
    cfg = load_config(YACS_CUSTOM, ["DATASETS.TRAIN", "('nothing_registered',)"])
    with pytest.raises(DatasetError, match="MODEL.DEFORMABLE_DETR.NUM_CLASSES is not set"):
        build_model(cfg, weights=None, device="cpu")


class _Messages(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.mark.parametrize(
    "path", sorted((ROOT / "configs").rglob("*.yaml")), ids=lambda p: p.relative_to(ROOT).as_posix()
)
def test_a_yacs_config_declares_its_version(path):
    """Without VERSION, every DefaultPredictor user reads "has no VERSION. Assuming it..."."""
    logger, handler = logging.getLogger("detectron2.config.compat"), _Messages()
    logger.addHandler(handler)
    try:
        cfg = load_config(str(path))
    finally:
        logger.removeHandler(handler)
    assert cfg.VERSION == 2
    assert not [m for m in handler.messages if "has no VERSION" in m], handler.messages


def test_a_dumped_lazy_config_loads_as_a_lazy_config():
    """The config.yaml a training writes is a LazyConfig, whatever its suffix."""
    dumped = ROOT / "tests" / "deformable_detr" / "dumped_configs" / "deformable_detr_tiny.yaml"
    cfg = load_config(str(dumped), ["train.max_iter=7"])
    assert cfg.train.max_iter == 7 and "_target_" in cfg.model
    with pytest.raises(ConfigOverrideError, match="did you mean train.max_iter"):
        load_config(str(dumped), ["train.max_iters=7"])

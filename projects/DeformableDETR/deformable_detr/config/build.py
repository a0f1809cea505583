"""One way from a config file to a config, and from a config to a model with its
weights, for every tool: training and evaluation, demo/demo.py, export, the
converters, the benchmarks and the tests, as detectron2's ``LazyConfig.load`` or
``get_cfg().merge_from_file`` then ``instantiate(cfg.model)`` or ``build_model(cfg)`` +
``DetectionCheckpointer(model).load(path)``.

Overrides are checked (:mod:`deformable_detr.config.overrides`); the class count comes
from the data (:mod:`deformable_detr.data.build`); loading follows
:mod:`deformable_detr.checkpoint.loading_rule`: strict for evaluation and inference (the
default here), lenient with a report for training.
"""

import os
from typing import List, Optional, Sequence

from detectron2.config import CfgNode, instantiate
from torch import nn

from ..checkpoint.checkpointer import DetrCheckpointer, load_weights_file
from ..checkpoint.loading_rule import LoadingRule, recorded_class_names
from ..data.build import data_class_names, resolve_num_classes

__all__ = [
    "CONFIGURED",
    "ConfigKindError",
    "build_model",
    "configured_weights",
    "input_format",
    "is_yacs",
    "load_config",
]

CONFIGURED = (
    "<the config's weights>"  # build_model's default: train.init_checkpoint / MODEL.WEIGHTS
)


class ConfigKindError(ValueError):
    """A config of a kind the tool does not take (a yacs file given to a LazyConfig tool)."""


def load_config(config_file: str, opts: Sequence[str] = (), *, lazy_only: bool = False):
    """A LazyConfig (.py, or the config.yaml a training dumps; overrides key=value) or
    yacs (.yaml; overrides KEY VALUE pairs or KEY=VALUE) config, its overrides checked:
    a key the config does not have is a ConfigOverrideError naming the closest one.

    Args:
        lazy_only: the caller takes LazyConfigs only (training, the benchmarks); a yacs
            file is then a ConfigKindError naming its LazyConfig twin.
    """
    yacs = is_yacs_file(config_file)
    if yacs and lazy_only:
        raise ConfigKindError(_not_lazy_message(config_file))
    if not yacs:
        from detectron2.config import LazyConfig

        from .overrides import apply_overrides

        return apply_overrides(LazyConfig.load(config_file), list(opts))
    from .yacs_config import load_yacs_config

    return load_yacs_config(config_file, opts)


def is_yacs_file(config_file: str) -> bool:
    """Whether a config file is a yacs config: a YAML file whose top-level keys are upper
    case (MODEL, _BASE_, ...), not a LazyConfig's dump (model, train, ...)."""
    if config_file.endswith(".py"):
        return False
    import yaml

    with open(config_file) as f:  # composed, not constructed: a dump has python tags
        node = yaml.compose(f, Loader=yaml.SafeLoader)
    keys = [key.value for key, _ in node.value] if isinstance(node, yaml.MappingNode) else []
    return all(str(key).isupper() for key in keys)


def _not_lazy_message(config_file: str) -> str:
    twin = os.path.splitext(config_file)[0] + ".py"
    use = f"its LazyConfig twin {twin}" if os.path.exists(twin) else "a LazyConfig .py file"
    return (
        f"{config_file} is a yacs config (upper-case keys: MODEL, VERSION: 2, ...), and this "
        "tool takes LazyConfig files only (.py, or the config.yaml a training dumps): use "
        f"{use} (yacs configs are for DefaultPredictor, demo/demo.py, "
        "tools/deploy/export_model.py and tools/analyze_model.py)"
    )


def is_yacs(cfg) -> bool:
    return isinstance(cfg, CfgNode)


def configured_weights(cfg) -> str:
    """train.init_checkpoint of a LazyConfig, MODEL.WEIGHTS of a yacs config."""
    return cfg.MODEL.WEIGHTS if is_yacs(cfg) else cfg.train.get("init_checkpoint", "")


def configured_device(cfg) -> str:
    if is_yacs(cfg):
        return cfg.MODEL.DEVICE
    return cfg.train.get("device", "cpu") if "train" in cfg else "cpu"


def input_format(cfg) -> str:
    """The image format the model takes: "RGB" or "BGR"."""
    if is_yacs(cfg):
        return cfg.INPUT.FORMAT
    return cfg.dataloader.test.mapper.get("image_format", "BGR")


def build_model(
    cfg,
    *,
    weights: Optional[str] = CONFIGURED,
    device: Optional[str] = None,
    class_names: Optional[Sequence[str]] = None,
) -> nn.Module:
    """The model of a LazyConfig or yacs config, in eval mode on `device` (default:
    the config's), with `weights` loaded strictly. Its class count, where the config
    leaves it to the data, is the number of `class_names`, else of the data's classes,
    else of the classes the weights record (deformable_detr.data.build.resolve_num_classes).

    Args:
        weights: a weights file (.pth, .pkl, .safetensors); by default the config's
            (train.init_checkpoint / MODEL.WEIGHTS); None: none loaded (random weights,
            e.g. to convert or train into).
        class_names: the classes the model is to predict, when known; a checkpoint that
            records other class names is then refused.

    Raises:
        DatasetError: the class count disagrees with the data, or nothing gives it.
        UnreadableCheckpointError: the file cannot be read (one line naming it).
        WeightsMismatchError: the weights do not fit the model, or none are configured.
    """
    device = device or configured_device(cfg)
    path = configured_weights(cfg) if weights == CONFIGURED else weights
    class_names = class_names or data_class_names(cfg)
    if is_yacs(cfg):
        cfg = cfg.clone()
        cfg.defrost()
    resolve_num_classes(cfg, class_names or _recorded_names(path))
    if is_yacs(cfg):
        from detectron2.modeling import build_model as build_yacs_model

        cfg.MODEL.DEVICE = device
        model = build_yacs_model(cfg)
    else:
        model = instantiate(cfg.model)
    model.to(device).eval()
    if path is not None:
        checkpointer = DetrCheckpointer(model)
        checkpointer.loading_rule = LoadingRule(strict=True, class_names=class_names)
        checkpointer.load(path)
    return model


def _recorded_names(path: Optional[str]) -> Optional[List[str]]:
    if not path or "://" in path:
        return None
    return recorded_class_names(load_weights_file(path))

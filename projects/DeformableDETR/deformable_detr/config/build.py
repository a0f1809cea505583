"""One way from a config to a model with its weights, for every tool: evaluation
(``--eval-only``), demo/demo.py, export, the converters and the tests, as
detectron2's ``instantiate(cfg.model)`` + ``DetectionCheckpointer(model).load(path)``.

Loading follows :mod:`deformable_detr.checkpoint.loading_rule`: strict for evaluation and
inference (the default here), lenient with a report for training.
"""

from typing import List, Optional, Sequence, Tuple

from detectron2.config import CfgNode, instantiate
from detectron2.data import MetadataCatalog
from detectron2.utils.registry import locate
from omegaconf import OmegaConf
from torch import nn

from ..checkpoint.checkpointer import DetrCheckpointer, load_weights_file
from ..checkpoint.loading_rule import LoadingRule, recorded_class_names
from ..data.coco_json import (
    DatasetError,
    check_same_classes,
    coco_json_classes,
    warn_classes_without_training_boxes,
)

__all__ = [
    "CONFIGURED",
    "build_model",
    "build_train_loader",
    "build_test_loader",
    "configured_weights",
    "data_class_names",
    "input_format",
    "load_config",
    "registered_dataset_name",
]

CONFIGURED = (
    "<the config's weights>"  # build_model's default: train.init_checkpoint / MODEL.WEIGHTS
)


def load_config(config_file: str, opts: Sequence[str] = ()):
    """A LazyConfig (.py; overrides key=value) or yacs (.yaml; overrides KEY VALUE
    pairs or KEY=VALUE) config."""
    if config_file.endswith(".py"):
        from detectron2.config import LazyConfig

        from .overrides import apply_overrides

        return apply_overrides(LazyConfig.load(config_file), list(opts))
    from .yacs_config import load_yacs_config

    pairs = list(opts)
    if any("=" in opt for opt in pairs):
        pairs = [part for opt in pairs for part in opt.split("=", 1)]
    return load_yacs_config(config_file, pairs)


def is_yacs(cfg) -> bool:
    return isinstance(cfg, CfgNode)


def configured_weights(cfg) -> str:
    """train.init_checkpoint of a LazyConfig, MODEL.WEIGHTS of a yacs config."""
    return cfg.MODEL.WEIGHTS if is_yacs(cfg) else cfg.train.get("init_checkpoint", "")


def configured_device(cfg) -> str:
    return cfg.MODEL.DEVICE if is_yacs(cfg) else cfg.train.get("device", "cpu")


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
    the config's), with `weights` loaded strictly.

    Args:
        weights: a weights file (.pth, .pkl, .safetensors); by default the config's
            (train.init_checkpoint / MODEL.WEIGHTS); None: none loaded (random weights,
            e.g. to convert or train into).
        class_names: the classes the model is to predict, when known; a checkpoint that
            records other class names is then refused.

    Raises:
        UnreadableCheckpointError: the file cannot be read (one line naming it).
        WeightsMismatchError: the weights do not fit the model, or none are configured.
    """
    device = device or configured_device(cfg)
    path = configured_weights(cfg) if weights == CONFIGURED else weights
    if not is_yacs(cfg):
        class_names = class_names or data_class_names(cfg)
        resolve_num_classes(cfg, class_names or _recorded_names(path))
    if is_yacs(cfg):
        from detectron2.modeling import build_model as build_yacs_model

        cfg = cfg.clone()
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


def _json_files(cfg) -> List[Tuple[str, str]]:
    """(override key, file) of the COCO-format JSONs a LazyConfig's data names."""
    return [
        (f"dataloader.{split}.dataset.json_file", cfg.dataloader[split].dataset.json_file)
        for split in ("train", "test")
        if split in cfg.dataloader and "json_file" in cfg.dataloader[split].dataset
    ]


def registered_dataset_name(dataset) -> Optional[str]:
    """The registered dataset a LazyConfig dataset node reads: its name, dataset_name or
    names (the first)."""
    for key in ("name", "dataset_name", "names"):
        name = dataset.get(key)
        if name:
            return name if isinstance(name, str) else name[0]
    inner = dataset.get("dataset_dicts")
    return registered_dataset_name(inner) if inner is not None else None


def data_class_names(cfg, split: str = "train") -> Optional[List[str]]:
    """The classes of a LazyConfig's data, in index order: the categories of its
    COCO-format JSONs (the training one, else the test one; both must agree), or the
    thing_classes of the registered dataset it reads; None when unknown."""
    files = [(key, f) for key, f in _json_files(cfg) if f]
    if files:
        classes = [(key, coco_json_classes(f)) for key, f in files]
        for key, names in classes[1:]:
            check_same_classes(classes[0][1], names, files[0][1], files[1][1])
            warn_classes_without_training_boxes(files[0][1], files[1][1])
        return classes[0][1]
    if _json_files(cfg) or split not in cfg.dataloader:
        return None
    name = registered_dataset_name(cfg.dataloader[split].dataset)
    names = MetadataCatalog.get(name).get("thing_classes") if name else None
    return list(names) if names else None


def _recorded_names(path: Optional[str]) -> Optional[List[str]]:
    if not path or "://" in path:
        return None
    return recorded_class_names(load_weights_file(path))


# where a model config keeps its class count: DETR-family models, detectron2's R-CNNs
_NUM_CLASSES_KEYS = ("num_classes", "roi_heads.num_classes")


def resolve_num_classes(cfg, class_names: Optional[Sequence[str]]) -> None:
    """Sets the model's class count (model.num_classes, or model.roi_heads.num_classes
    of an R-CNN) from the data's classes when the config leaves it None; a number that
    disagrees with them is an error naming both."""
    key = next((k for k in _NUM_CLASSES_KEYS if OmegaConf.select(cfg.model, k) is not None), None)
    key = key or next((k for k in _NUM_CLASSES_KEYS if _has_key(cfg.model, k)), None)
    if key is None:
        raise DatasetError(
            "the model config has no class count (model.num_classes or model.roi_heads.num_classes)"
        )
    num_classes = OmegaConf.select(cfg.model, key)
    if class_names is None:
        if num_classes is None:
            raise DatasetError(
                f"model.{key} is not set and nothing says what the classes are: give the "
                "annotation files (dataloader.train.dataset.json_file=..., "
                "dataloader.test.dataset.json_file=...) or weights that record their classes"
            )
        return
    if num_classes is None:
        OmegaConf.update(cfg.model, key, len(class_names))
    elif num_classes != len(class_names):
        source = next((f for _, f in _json_files(cfg) if f), "the data")
        raise DatasetError(
            f"model.{key}={num_classes}, but {source} has {len(class_names)} categories "
            f"({', '.join(class_names)}); leave model.{key} out, the classes come from "
            "the annotation file"
        )


def _has_key(node, key: str) -> bool:
    parent, _, name = key.rpartition(".")
    parent = OmegaConf.select(node, parent) if parent else node
    return parent is not None and name in parent


def build_train_loader(cfg) -> Tuple[object, int]:
    """(data loader, number of training images) of cfg.dataloader.train, whose dataset
    is built once (it is counted for the schedule, see deformable_detr.solver.schedule)."""
    node = cfg.dataloader.train
    dataset = instantiate(node.dataset)
    target = node._target_
    target = locate(target) if isinstance(target, str) else target
    kwargs = {k: instantiate(v) for k, v in node.items() if k not in ("_target_", "dataset")}
    return target(dataset=dataset, **kwargs), len(dataset)


def build_test_loader(cfg):
    """The data loader of the config's test set: dataloader.test of a LazyConfig,
    DATASETS.TEST[0] of a yacs config."""
    if is_yacs(cfg):
        from detectron2.data import build_detection_test_loader

        return build_detection_test_loader(cfg, cfg.DATASETS.TEST[0])
    return instantiate(cfg.dataloader.test)

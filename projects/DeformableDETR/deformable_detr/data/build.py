"""The data a config describes, one rule for LazyConfig and yacs configs: its datasets
and their classes, the model's class count taken from them, and its loaders
(training, evaluation, int8 calibration)."""

import copy
from typing import List, Optional, Sequence, Tuple

from detectron2.config import CfgNode, instantiate
from detectron2.data import MetadataCatalog
from detectron2.utils.registry import locate
from omegaconf import OmegaConf

from .coco_json import (
    DatasetError,
    check_same_classes,
    coco_json_classes,
    register_coco_json,
    warn_classes_without_training_boxes,
)

__all__ = [
    "build_test_loader",
    "build_train_loader",
    "class_names_of",
    "data_class_names",
    "dataset_name",
    "dataset_source",
    "register_yacs_datasets",
    "resolve_num_classes",
]

SPLITS = ("train", "test")


def dataset_name(cfg, split: str = "train") -> Optional[str]:
    """The registered dataset a config's `split` ("train" or "test") reads:
    DATASETS.TRAIN[0] / TEST[0] of a yacs config; the name, dataset_name or names (the
    first) of a LazyConfig's dataloader.{split}.dataset; None when it names none."""
    if isinstance(cfg, CfgNode):
        names = cfg.DATASETS[split.upper()]
        return names[0] if names else None
    dataloader = cfg.get("dataloader") or {}
    return _node_dataset_name(dataloader[split].dataset) if split in dataloader else None


def dataset_source(cfg, split: str = "train") -> Optional[str]:
    """What a config's `split` reads: its COCO-format JSON when it is given by one, else
    its registered dataset's name; None when neither is known."""
    return _json_file(cfg, split) or dataset_name(cfg, split)


def _node_dataset_name(dataset) -> Optional[str]:
    for key in ("name", "dataset_name", "names"):
        name = dataset.get(key)
        if name:
            return name if isinstance(name, str) else name[0]
    inner = dataset.get("dataset_dicts")
    return _node_dataset_name(inner) if inner is not None else None


def class_names_of(name: str) -> Optional[List[str]]:
    """The thing_classes of a registered dataset, None when it has none."""
    names = MetadataCatalog.get(name).get("thing_classes")
    return list(names) if names else None


def _json_key(cfg, split: str) -> str:
    if isinstance(cfg, CfgNode):
        return f"DATASETS.{split.upper()}_JSON"
    return f"dataloader.{split}.dataset.json_file"


def _json_file(cfg, split: str) -> Optional[str]:
    """The COCO-format JSON that gives a config's `split`: "" where the config takes
    one (a LazyConfig dataset with a json_file) and none is given; None where the split
    reads a registered dataset (a yacs config without DATASETS.{TRAIN,TEST}_JSON)."""
    if isinstance(cfg, CfgNode):
        return cfg.DATASETS[f"{split.upper()}_JSON"] or None
    dataloader = cfg.get("dataloader") or {}
    return dataloader[split].dataset.get("json_file") if split in dataloader else None


def data_class_names(cfg, split: str = "train") -> Optional[List[str]]:
    """The classes of a config's data, in index order: the categories of its
    COCO-format JSONs (the training one, else the test one; both must agree), or the
    thing_classes of the registered dataset its `split` reads; None when unknown."""
    files = [_json_file(cfg, s) for s in SPLITS]
    given = [f for f in files if f]
    if given:
        classes = [coco_json_classes(f) for f in given]
        if len(given) == 2:
            check_same_classes(classes[0], classes[1], given[0], given[1])
            warn_classes_without_training_boxes(given[0], given[1])
        return classes[0]
    if "" in files:  # a config of annotation files, none given
        return None
    name = dataset_name(cfg, split)
    return class_names_of(name) if name else None


# where a LazyConfig's model keeps its class count: DETR-family models, detectron2's R-CNNs
_NUM_CLASSES_KEYS = ("num_classes", "roi_heads.num_classes")
_YACS_NUM_CLASSES = "MODEL.DEFORMABLE_DETR.NUM_CLASSES"


def resolve_num_classes(cfg, class_names: Optional[Sequence[str]]) -> None:
    """Sets the model's class count to the number of `class_names` (the data's, see
    data_class_names) where the config leaves it unset: model.num_classes (or
    model.roi_heads.num_classes of an R-CNN) None in a LazyConfig,
    MODEL.DEFORMABLE_DETR.NUM_CLASSES 0 in a yacs config. A number that disagrees with
    them is an error naming both, an unset one with nothing to take it from too."""
    key, num_classes = _num_classes(cfg)
    if class_names is None:
        if not num_classes:
            files = ", ".join(f"{_json_key(cfg, split)}=..." for split in SPLITS)
            raise DatasetError(
                f"{key} is not set and nothing says what the classes are: give the "
                f"annotation files ({files}) or weights that record their classes"
            )
        return
    if not num_classes:
        _set(cfg, key, len(class_names))
    elif num_classes != len(class_names):
        source = next((f for f in (_json_file(cfg, s) for s in SPLITS) if f), "the data")
        raise DatasetError(
            f"{key}={num_classes}, but {source} has {len(class_names)} categories "
            f"({', '.join(class_names)}); {_unset_hint(cfg, key)}, the classes then come "
            "from the annotation file"
        )


def _num_classes(cfg) -> Tuple[str, Optional[int]]:
    """(key, value) of the config's model class count."""
    if isinstance(cfg, CfgNode):
        return _YACS_NUM_CLASSES, cfg.MODEL.DEFORMABLE_DETR.NUM_CLASSES
    key = next((k for k in _NUM_CLASSES_KEYS if OmegaConf.select(cfg.model, k) is not None), None)
    key = key or next((k for k in _NUM_CLASSES_KEYS if _has_key(cfg.model, k)), None)
    if key is None:
        raise DatasetError(
            "the model config has no class count (model.num_classes or model.roi_heads.num_classes)"
        )
    return f"model.{key}", OmegaConf.select(cfg.model, key)


def _set(cfg, key: str, value: int) -> None:
    if isinstance(cfg, CfgNode):
        cfg.merge_from_list([key, value])
    else:
        OmegaConf.update(cfg, key, value)


def _unset_hint(cfg, key: str) -> str:
    return f"set {key} to 0" if isinstance(cfg, CfgNode) else f"leave {key} out"


def _has_key(node, key: str) -> bool:
    parent, _, name = key.rpartition(".")
    parent = OmegaConf.select(node, parent) if parent else node
    return parent is not None and name in parent


def register_yacs_datasets(cfg: CfgNode) -> None:
    """The yacs route to COCO-format files: registers DATASETS.TRAIN[0] and
    DATASETS.TEST[0] from DATASETS.{TRAIN,TEST}_JSON and _IMAGE_ROOT (those given) and
    resolves MODEL.DEFORMABLE_DETR.NUM_CLASSES (resolve_num_classes: 0 takes the data's).
    Call it before DefaultPredictor(cfg) or DefaultTrainer(cfg), whose metadata then
    has the JSON's class names."""
    _register_yacs_json(cfg)
    resolve_num_classes(cfg, data_class_names(cfg))


def _register_yacs_json(cfg: CfgNode) -> None:
    for split in ("TRAIN", "TEST"):
        json_file = cfg.DATASETS[f"{split}_JSON"]
        if not json_file:
            continue
        if not cfg.DATASETS[split]:
            raise DatasetError(
                f"DATASETS.{split}_JSON is set but DATASETS.{split} names no dataset"
            )
        register_coco_json(cfg.DATASETS[split][0], json_file, cfg.DATASETS[f"{split}_IMAGE_ROOT"])


def build_train_loader(cfg) -> Tuple[object, int]:
    """(data loader, number of training images) of a LazyConfig's dataloader.train, whose
    dataset is built once (it is counted for the schedule, see
    deformable_detr.solver.schedule)."""
    node = cfg.dataloader.train
    dataset = instantiate(node.dataset)
    target = node._target_
    target = locate(target) if isinstance(target, str) else target
    kwargs = {k: instantiate(v) for k, v in node.items() if k not in ("_target_", "dataset")}
    return target(dataset=dataset, **kwargs), len(dataset)


def build_test_loader(cfg, split: str = "test"):
    """A loader of the images of a config's `split` ("test" or "train"), each read as
    for evaluation (the test mapper: no augmentation, the test resize), one per batch:
    the LazyConfig's dataloader.test, for "train" over dataloader.train.dataset; the
    yacs config's DATASETS.TEST[0] or TRAIN[0]."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
    if isinstance(cfg, CfgNode):
        from detectron2.data import build_detection_test_loader

        _register_yacs_json(cfg)
        name = dataset_name(cfg, split)
        if name is None:
            raise DatasetError(f"DATASETS.{split.upper()} names no dataset")
        return build_detection_test_loader(cfg, name)
    if split == "train":
        cfg = copy.deepcopy(cfg)
        cfg.dataloader.test.dataset = cfg.dataloader.train.dataset
    return instantiate(cfg.dataloader.test)

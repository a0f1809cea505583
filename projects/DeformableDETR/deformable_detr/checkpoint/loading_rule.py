"""The loading rule: how a checkpoint's weights get into a model of this package.

- Evaluation and inference (a model in eval mode: ``--eval-only``, DefaultPredictor,
  demo/demo.py, export, conversion): strict. Every model key must be in the
  checkpoint with its shape and the checkpoint may hold no other model keys,
  else one :class:`WeightsMismatchError` names the missing, unexpected and
  mis-shaped keys. No weights at all is an error too.
- Training and fine-tuning (a model in train mode): lenient, with a report. What
  fits loads; one log line says what was re-initialised, left as initialised or
  ignored. The class heads (:class:`ClassHeads`) are re-initialised when the
  checkpoint's classes are not the model's: another count, or other names
  (checkpoints written here record their class names under ``class_names``).
  With the same count and names not recorded, ``reinit_class_heads`` does the
  same; without it the heads are kept with a warning that says so.

Which models load by the rule is declared, never guessed: the DETR family
(``SetPredictionDetector.class_heads``, registered with :func:`register_class_heads`)
and detectron2's R-CNNs (``GeneralizedRCNN``, registered below with
:func:`rcnn_class_heads`). Other models load as detectron2 loads them.
:func:`install_loading_rule` (run when ``deformable_detr`` is imported) makes every
DetectionCheckpointer apply the rule; a checkpointer's ``loading_rule`` attribute,
when set, overrides the rule taken from the model's mode. After loading, the model's
``class_names`` are the classes its heads predict, when known (the data's, or
those the checkpoint records), e.g. ``DefaultPredictor(cfg).model.class_names``.
"""

import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts
from detectron2.modeling import GeneralizedRCNN
from detectron2.modeling.roi_heads import FastRCNNOutputLayers
from fvcore.common.checkpoint import _strip_prefix_if_present
from torch import nn

from . import checkpointer
from .checkpointer import UnreadableCheckpointError

__all__ = [
    "CLASS_NAMES_KEY",
    "ClassHeads",
    "ClassNames",
    "LoadingRule",
    "WeightsMismatchError",
    "class_heads",
    "install_loading_rule",
    "rcnn_class_heads",
    "recorded_class_names",
    "register_class_heads",
]

logger = logging.getLogger(__name__)

CLASS_NAMES_KEY = "class_names"  # the checkpoint's class names, in class-index order


class WeightsMismatchError(UnreadableCheckpointError):
    """Weights that do not fit the model where it must load strictly (evaluation,
    inference), or no weights where some are needed."""


@dataclass
class LoadingRule:
    """How a checkpointer loads weights into a model with class heads.

    Args:
        strict: every model key with its shape and nothing else, or an error.
        class_names: the classes the model is to predict, in index order, when known.
        reinit_class_heads: also re-initialise class heads of the same count whose
            classes the checkpoint does not record (lenient loading only).
    """

    strict: bool
    class_names: Optional[Sequence[str]] = None
    reinit_class_heads: bool = False


class ClassNames:
    """A checkpointable that records the class names in every checkpoint saved:
    ``DetrCheckpointer(model, dir, class_names=ClassNames(names))``."""

    def __init__(self, names: Sequence[str]):
        self.names = list(names)

    def state_dict(self) -> List[str]:
        return self.names

    def load_state_dict(self, names: List[str]) -> None:
        pass  # the data defines the classes; loading compares them (see LoadingRule)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a (Distributed)DataParallel wrapper."""
    return (
        model.module
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel))
        else model
    )


@dataclass(frozen=True)
class ClassHeads:
    """A model's class-specific layers, which the loading rule re-initialises when
    a checkpoint's classes are not the model's.

    Args:
        prefixes: their state-dict key prefixes, e.g. ("class_embed.",); the first
            ".bias" key under the first prefix has one entry per logit.
        reset: re-initialises them as at construction.
        extra_logits: logits beyond the object classes (1 with a no-object or
            background class).
        initialisation: how `reset` initialises them, for the log line.
    """

    prefixes: Tuple[str, ...]
    reset: Callable[[], None]
    extra_logits: int = 0
    initialisation: str = "as at construction"

    def owns(self, key: str) -> bool:
        return key.startswith(self.prefixes)

    def count(self, state: Dict[str, torch.Tensor]) -> Optional[int]:
        """The class count of the heads in `state`, None when it has none."""
        first = self.prefixes[0]
        biases = [v for k, v in state.items() if k.startswith(first) and k.endswith(".bias")]
        return biases[0].shape[0] - self.extra_logits if biases else None


# model class -> where a model of it has its class heads: the models that load by the rule
_CLASS_HEADS: Dict[type, Callable[[nn.Module], ClassHeads]] = {}


def register_class_heads(
    model_class: type, find: Callable[[nn.Module], ClassHeads] = lambda model: model.class_heads()
) -> type:
    """Makes models of `model_class` (and its subclasses) load by the rule;
    `find(model)` says where a model's class heads are (by default the class
    declares them in a ``class_heads()`` method). Returns model_class, so it also
    decorates a class."""
    _CLASS_HEADS[model_class] = find
    return model_class


def class_heads(model: nn.Module) -> Optional[ClassHeads]:
    """The class heads of a model that loads by the rule, None for any other model."""
    model = unwrap(model)
    for model_class, find in _CLASS_HEADS.items():
        if isinstance(model, model_class):
            return find(model)
    return None


def rcnn_class_heads(model: GeneralizedRCNN) -> ClassHeads:
    """detectron2's R-CNN: each box predictor's classifier (K + 1 logits, the last
    background) and class-specific box regressor, and a class-specific mask predictor,
    re-initialised as detectron2 initialises them."""
    layers = {}  # state-dict prefix -> (layer, std of its initial weights)
    for name, module in model.named_modules():
        if isinstance(module, FastRCNNOutputLayers):
            layers[f"{name}.cls_score."] = (module.cls_score, 0.01)
            if module.bbox_pred.out_features != len(module.box2box_transform.weights):
                layers[f"{name}.bbox_pred."] = (module.bbox_pred, 0.001)
    mask_head = getattr(model.roi_heads, "mask_head", None)
    if mask_head is not None and mask_head.predictor.out_channels > 1:
        layers["roi_heads.mask_head.predictor."] = (mask_head.predictor, 0.001)

    def reset() -> None:
        for layer, std in layers.values():
            nn.init.normal_(layer.weight, std=std)
            nn.init.zeros_(layer.bias)

    return ClassHeads(tuple(layers), reset, extra_logits=1)


register_class_heads(GeneralizedRCNN, rcnn_class_heads)


def rule_of(checkpointer: DetectionCheckpointer) -> LoadingRule:
    """The checkpointer's loading_rule, else strict in eval mode, lenient in train mode."""
    rule = getattr(checkpointer, "loading_rule", None)
    return rule if rule is not None else LoadingRule(strict=not checkpointer.model.training)


def recorded_class_names(checkpoint: Dict[str, Any]) -> Optional[List[str]]:
    names = checkpoint.get(CLASS_NAMES_KEY)
    return [str(n) for n in names] if isinstance(names, (list, tuple)) else None


def _names(names: Optional[Sequence[str]], limit: int = 8) -> str:
    if names is None:
        return ""
    shown = ", ".join(names[:limit]) + (
        f", ... ({len(names)} in all)" if len(names) > limit else ""
    )
    return f" ({shown})"


def _keys(keys: Sequence[str], limit: int = 12) -> str:
    """Keys grouped by module, e.g. 'class_embed.0.{bias,weight}', the first `limit` groups."""
    groups: Dict[str, List[str]] = {}
    for key in sorted(keys):
        module, _, leaf = key.rpartition(".")
        groups.setdefault(module, []).append(leaf)
    parts = [
        f"{module}.{leaves[0]}" if len(leaves) == 1 else f"{module}.{{{','.join(leaves)}}}"
        for module, leaves in groups.items()
    ]
    more = f", ... ({len(keys)} keys in all)" if len(parts) > limit else ""
    return ", ".join(parts[:limit]) + more


def class_head_change(
    state: Dict[str, torch.Tensor],
    checkpoint_names: Optional[List[str]],
    heads: ClassHeads,
    model_state: Dict[str, torch.Tensor],
    rule: LoadingRule,
) -> Optional[str]:
    """Why the checkpoint's class heads must not be loaded into the model whose
    state is `model_state`, or None when they hold the model's classes (or nothing
    says otherwise)."""
    count, model_count = heads.count(state), heads.count(model_state)
    if count is None:
        return None
    if count != model_count:
        return (
            f"the checkpoint's class heads have {count} classes{_names(checkpoint_names)}, "
            f"the model {model_count}{_names(rule.class_names)}"
        )
    if checkpoint_names is not None and rule.class_names is not None:
        if list(checkpoint_names) == list(rule.class_names):
            return None
        return (
            f"the checkpoint's classes are{_names(checkpoint_names)}, the data's"
            f"{_names(rule.class_names)}"
        )
    if rule.reinit_class_heads:
        return "reinit_class_heads is set and the checkpoint does not record its classes"
    return None


def _state_dict_of(checkpointer: DetectionCheckpointer, checkpoint: Dict[str, Any]) -> Dict:
    """checkpoint["model"] as detectron2 prepares it: model-zoo names matched, numpy
    arrays as tensors, a DistributedDataParallel "module." prefix removed."""
    if checkpoint.get("matching_heuristics", False):
        checkpointer._convert_ndarray_to_tensor(checkpoint["model"])
        checkpoint["model"] = align_and_update_state_dicts(
            checkpointer.model.state_dict(),
            checkpoint["model"],
            c2_conversion=checkpoint.get("__author__", None) == "Caffe2",
        )
    state = checkpoint.pop("model")
    checkpointer._convert_ndarray_to_tensor(state)
    _strip_prefix_if_present(state, "module.")
    return state


def load_by_rule(
    model: nn.Module,
    state: Dict[str, torch.Tensor],
    rule: LoadingRule,
    source: str,
    checkpoint_names: Optional[List[str]] = None,
) -> None:
    """Loads `state` into `model` by `rule` (see the module docstring).

    Raises:
        WeightsMismatchError: strict, and a key is missing, unexpected or of another shape,
            or the checkpoint records other class names than rule.class_names.
    """
    model = unwrap(model)
    heads = class_heads(model)
    ours = model.state_dict()
    # buffers the model computes, which older checkpoints hold (detectron2 ignores them too:
    # pixel_mean/std, an R-CNN's anchor_generator.cell_anchors)
    computed = {name for name, _ in model.named_buffers()} - set(ours)
    missing = sorted(set(ours) - set(state))
    unexpected = sorted(set(state) - set(ours) - computed)
    shapes = {
        k: (tuple(v.shape), tuple(ours[k].shape))
        for k, v in state.items()
        if k in ours and v.shape != ours[k].shape
    }
    reason = class_head_change(state, checkpoint_names, heads, ours, rule)
    if rule.strict:
        _check_fits(source, missing, unexpected, shapes, reason)
        model.load_state_dict({k: v for k, v in state.items() if k in ours}, strict=True)
        return
    reinit = sorted(k for k in ours if heads.owns(k)) if reason else []
    loaded = {k: v for k, v in state.items() if k in ours and k not in shapes and k not in reinit}
    model.load_state_dict(loaded, strict=False)
    if reinit:
        heads.reset()
        reason = f"{heads.initialisation}, because {reason}"
    _report(source, len(loaded), len(ours), reason, reinit, missing, unexpected, shapes)
    if (
        not reason
        and any(heads.owns(k) for k in loaded)
        and (checkpoint_names is None or rule.class_names is None)
    ):
        logger.warning(
            f"{source}: kept the checkpoint's {heads.count(ours)}-class heads; the checkpoint or "
            "the data does not say which classes they are, so they are taken to be the data's in "
            "the same order (set reinit_class_heads, train.reinit_class_heads=True, to start "
            "them from scratch)"
        )


def _check_fits(source, missing, unexpected, shapes, class_reason) -> None:
    problems = []
    if missing:
        problems.append(f"{len(missing)} model keys missing: {_keys(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_keys(unexpected)}")
    if shapes:
        shown = "; ".join(f"{k} {a} vs model {b}" for k, (a, b) in list(shapes.items())[:6])
        problems.append(f"{len(shapes)} of another shape: {shown}")
    if class_reason and not shapes:
        problems.append(class_reason)
    if problems:
        raise WeightsMismatchError(
            f"{source}: the weights do not fit the model ({'; '.join(problems)}); evaluation and "
            "inference need the weights of this config's model, trained on these classes"
        )


def _report(source, loaded, total, reason, reinit, missing, unexpected, shapes) -> None:
    parts = [f"{source}: loaded {loaded} of the model's {total} tensors"]
    if reinit:
        parts.append(f"re-initialised {_keys(reinit)} {reason}")
    left = [k for k in missing if k not in reinit]
    if left:
        parts.append(f"{len(left)} not in the checkpoint, left as initialised: {_keys(left)}")
    mis_shaped = [k for k in shapes if k not in reinit]
    if mis_shaped:
        parts.append(
            f"{len(mis_shaped)} of another shape, left as initialised: {_keys(mis_shaped)}"
        )
    if unexpected:
        parts.append(f"{len(unexpected)} not in the model, ignored: {_keys(unexpected)}")
    (logger.warning if len(parts) > 1 else logger.info)("; ".join(parts))


_detectron2_load = DetectionCheckpointer.load
_detectron2_load_model = DetectionCheckpointer._load_model


def _load(self, path: str, *args, **kwargs) -> Dict[str, Any]:
    """DetectionCheckpointer.load: a missing file is one line naming it, and no
    weights for a model that must load strictly is an error."""
    if not path and class_heads(self.model) is not None and rule_of(self).strict:
        raise WeightsMismatchError(
            "no weights given (train.init_checkpoint / MODEL.WEIGHTS is empty): evaluation and "
            "inference need trained weights"
        )
    if path and "://" not in path and not os.path.isfile(path.split("?")[0]):
        raise UnreadableCheckpointError(f"{path}: no such weights file; check the path")
    self._weights_source = path
    return _detectron2_load(self, path, *args, **kwargs)


def _load_model(self, checkpoint: Dict[str, Any]):
    if class_heads(self.model) is None:
        return _detectron2_load_model(self, checkpoint)
    source = getattr(self, "_weights_source", None) or "the checkpoint"
    state = _state_dict_of(self, checkpoint)
    rule, recorded = rule_of(self), recorded_class_names(checkpoint)
    load_by_rule(self.model, state, rule, source, recorded)
    # what the class heads now predict, for visualizers (demo/demo.py) and users
    unwrap(self.model).class_names = list(rule.class_names or recorded or []) or None
    return None  # reported above; nothing for fvcore to log again


def install_loading_rule() -> None:
    """Makes every DetectionCheckpointer of this process load weights files as data
    (deformable_detr.checkpoint.checkpointer) and models that declare their class
    heads by the rule of this module.

    This patches four methods of detectron2's DetectionCheckpointer (load,
    _load_model, _load_file, _torch_load) instead of subclassing it, because
    detectron2 builds its own: DefaultPredictor runs ``DetectionCheckpointer(model)
    .load(cfg.MODEL.WEIGHTS)`` and DefaultTrainer, demo code and user scripts do
    likewise, so only the class itself reaches them. Nothing on the model can stand
    in: with no weights detectron2 never calls the model, it drops mis-shaped keys
    before ``load_state_dict``, and it unpickles ``.pkl`` files with ``pickle.load``,
    which runs whatever code the file names. Importing ``deformable_detr`` runs this
    once; methods are looked up when called, so a DefaultPredictor imported before
    that import loads by the rule too (tests/deformable_detr/test_weights.py).
    """
    DetectionCheckpointer.load = _load
    DetectionCheckpointer._load_model = _load_model
    DetectionCheckpointer._load_file = checkpointer.load_file_as_data
    DetectionCheckpointer._torch_load = checkpointer.torch_load_as_data

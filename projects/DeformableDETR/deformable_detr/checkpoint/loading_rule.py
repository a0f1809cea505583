"""The loading rule: how a checkpoint's weights get into a model of this package.

- Evaluation and inference (a model in eval mode: ``--eval-only``, DefaultPredictor,
  demo/demo.py, export, conversion): strict. Every model key must be in the
  checkpoint with its shape and the checkpoint may hold no other model keys,
  else one :class:`WeightsMismatchError` names the missing, unexpected and
  mis-shaped keys. No weights at all is an error too.
- Training and fine-tuning (a model in train mode): lenient, with a report. What
  fits loads; one log line says what was re-initialised, left as initialised or
  ignored. The class heads (``class_embed.*``: each decoder layer's and the
  two-stage encoder's) are re-initialised with the focal prior when the
  checkpoint's classes are not the model's: another count, or other names
  (checkpoints written here record their class names under ``class_names``).
  With the same count and names not recorded, ``reinit_class_heads`` does the
  same; without it the heads are kept with a warning that says so.

:func:`install_loading_rule` (run when ``deformable_detr`` is imported) makes
detectron2's DetectionCheckpointer apply this rule to models with class heads
(those with ``reset_class_heads``); other models load as detectron2 loads them.
DefaultPredictor builds its own DetectionCheckpointer after ``model.eval()``,
so it loads strictly; a checkpointer's ``loading_rule`` attribute, when set,
overrides the rule taken from the model's mode. After loading, the model's
``class_names`` are the classes its heads predict, when known (the data's, or
those the checkpoint records), e.g. ``DefaultPredictor(cfg).model.class_names``.
"""

import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts
from fvcore.common.checkpoint import _strip_prefix_if_present
from torch import nn

from .checkpointer import UnreadableCheckpointError

__all__ = [
    "CLASS_NAMES_KEY",
    "ClassNames",
    "LoadingRule",
    "WeightsMismatchError",
    "install_loading_rule",
    "recorded_class_names",
]

logger = logging.getLogger(__name__)

CLASS_HEADS = "class_embed."
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


def has_class_heads(model: nn.Module) -> bool:
    return hasattr(unwrap(model), "reset_class_heads")


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
    model: nn.Module,
    rule: LoadingRule,
) -> Optional[str]:
    """Why the checkpoint's class heads must not be loaded into `model`, or None
    when they hold the model's classes (or nothing says otherwise)."""
    heads = [v for k, v in state.items() if k.startswith(CLASS_HEADS) and k.endswith(".bias")]
    if not heads:
        return None
    count, model_count = heads[0].shape[0], unwrap(model).num_classes
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
    ours = model.state_dict()
    missing = sorted(set(ours) - set(state))
    unexpected = sorted(set(state) - set(ours))
    shapes = {
        k: (tuple(v.shape), tuple(ours[k].shape))
        for k, v in state.items()
        if k in ours and v.shape != ours[k].shape
    }
    reason = class_head_change(state, checkpoint_names, model, rule)
    if rule.strict:
        _check_fits(source, missing, unexpected, shapes, reason)
        model.load_state_dict(state, strict=True)
        return
    reinit = sorted(k for k in ours if k.startswith(CLASS_HEADS)) if reason else []
    loaded = {k: v for k, v in state.items() if k in ours and k not in shapes and k not in reinit}
    model.load_state_dict(loaded, strict=False)
    if reinit:
        model.reset_class_heads()
    _report(source, len(loaded), len(ours), reason, reinit, missing, unexpected, shapes)
    if (
        not reason
        and any(k.startswith(CLASS_HEADS) for k in loaded)
        and (checkpoint_names is None or rule.class_names is None)
    ):
        logger.warning(
            f"{source}: kept the checkpoint's {model.num_classes}-class heads; the checkpoint or "
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
        parts.append(f"re-initialised {_keys(reinit)} with the focal prior, because {reason}")
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
    if not path and has_class_heads(self.model) and rule_of(self).strict:
        raise WeightsMismatchError(
            "no weights given (train.init_checkpoint / MODEL.WEIGHTS is empty): evaluation and "
            "inference need trained weights"
        )
    if path and "://" not in path and not os.path.isfile(path.split("?")[0]):
        raise UnreadableCheckpointError(f"{path}: no such weights file; check the path")
    self._weights_source = path
    return _detectron2_load(self, path, *args, **kwargs)


def _load_model(self, checkpoint: Dict[str, Any]):
    if not has_class_heads(self.model):
        return _detectron2_load_model(self, checkpoint)
    source = getattr(self, "_weights_source", None) or "the checkpoint"
    state = _state_dict_of(self, checkpoint)
    rule, recorded = rule_of(self), recorded_class_names(checkpoint)
    load_by_rule(self.model, state, rule, source, recorded)
    # what the class heads now predict, for visualizers (demo/demo.py) and users
    unwrap(self.model).class_names = list(rule.class_names or recorded or []) or None
    return None  # reported above; nothing for fvcore to log again


def install_loading_rule() -> None:
    """Makes every DetectionCheckpointer of this process load models with class
    heads by the rule of this module (DefaultPredictor's and DefaultTrainer's too)."""
    DetectionCheckpointer.load = _load
    DetectionCheckpointer._load_model = _load_model

"""The schedule follows the batch the user sets: a config states its length in
epochs (train.epochs), its lr drop in epochs (epoch_step_multiplier) and the
learning rate for a reference batch
(optimizer.lr at train.lr_reference_batch_size); when training starts, the
iterations come from the number of training images and
dataloader.train.total_batch_size, and the learning rate from the rule
train.lr_scaling:

- "sqrt" (the default): lr = optimizer.lr * sqrt(batch / reference), the
  square-root rule for Adam-type optimizers (Malladi et al., 2022; measured on the
  synthetic data in docs/custom_data.md);
- "linear": lr = optimizer.lr * batch / reference (the rule for SGD);
- "none": optimizer.lr as it is.

A train.max_iter, train.checkpointer.period or train.eval_period set in the
config or on the command line is kept as it is.
"""

import math
from typing import Dict

from fvcore.common.param_scheduler import MultiStepParamScheduler

__all__ = ["LR_SCALING", "epoch_step_multiplier", "iterations", "resolve_schedule", "scaled_lr"]

LR_SCALING = ("sqrt", "linear", "none")
# steps of epoch_step_multiplier's schedule: it drops the lr within 1e-6 of the run's length
_RESOLUTION = 1_000_000


def epoch_step_multiplier(
    total_epochs: float, drop_epochs: float, factor: float = 0.1
) -> MultiStepParamScheduler:
    """The lr multiplier of a step schedule in epochs: 1, then `factor` from
    `drop_epochs` of `total_epochs` on. It sees the fraction of training done
    (detectron2's LRMultiplier), so the drop stays at the same fraction of the run
    at any batch size, number of images or train.epochs."""
    if not 0 < drop_epochs < total_epochs:
        raise ValueError(
            f"lr drop after {drop_epochs} of {total_epochs} epochs; expected "
            "0 < drop_epochs < total_epochs"
        )
    return MultiStepParamScheduler(
        values=[1.0, factor],
        milestones=[int(drop_epochs / total_epochs * _RESOLUTION)],
        num_updates=_RESOLUTION,
    )


def iterations(epochs: float, num_images: int, batch_size: int) -> int:
    return int(math.ceil(epochs * num_images / batch_size))


def scaled_lr(lr: float, batch_size: int, reference_batch_size: int, rule: str) -> float:
    """The learning rate at `batch_size` of one that is `lr` at `reference_batch_size`."""
    if rule not in LR_SCALING:
        raise ValueError(f"train.lr_scaling={rule!r}; expected one of {', '.join(LR_SCALING)}")
    ratio = batch_size / reference_batch_size
    return lr * {"sqrt": math.sqrt(ratio), "linear": ratio, "none": 1.0}[rule]


def resolve_schedule(cfg, num_images: int) -> Dict[str, float]:
    """Sets train.max_iter, train.checkpointer.period and train.eval_period (those
    left None) from train.epochs, train.checkpoint_epochs and train.eval_epochs, and
    optimizer.lr by the scaling rule, for `num_images` training images at
    dataloader.train.total_batch_size. Returns what it set."""
    train, batch = cfg.train, cfg.dataloader.train.total_batch_size
    resolved = {}
    epochs = {
        "max_iter": train.get("epochs"),
        "checkpoint period": train.get("checkpoint_epochs"),
        "eval period": train.get("eval_epochs"),
    }
    for key, node, name in (
        ("max_iter", train, "max_iter"),
        ("checkpoint period", train.checkpointer, "period"),
        ("eval period", train, "eval_period"),
    ):
        if node.get(name) is None:
            if epochs[key] is None:
                raise ValueError(
                    f"train.{'checkpointer.' if name == 'period' else ''}{name} is not set and "
                    "there is no epoch count to derive it from (train.epochs, "
                    "train.checkpoint_epochs, train.eval_epochs)"
                )
            node[name] = resolved[key] = iterations(epochs[key], num_images, batch)
    reference = train.get("lr_reference_batch_size")
    if reference and batch != reference:
        rule = train.get("lr_scaling", "sqrt")
        cfg.optimizer.lr = resolved["lr"] = scaled_lr(cfg.optimizer.lr, batch, reference, rule)
    return resolved

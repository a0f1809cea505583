"""The optimizer and its schedule: per-parameter lr factors and parameter groups,
and the epoch schedule turned into iterations and milestones."""

from .lr_factors import LrFactor
from .param_groups import LayerDecayLrFactor, detector_param_groups
from .schedule import epoch_step_multiplier, iterations, resolve_schedule, scaled_lr

__all__ = [
    "LayerDecayLrFactor",
    "LrFactor",
    "detector_param_groups",
    "epoch_step_multiplier",
    "iterations",
    "resolve_schedule",
    "scaled_lr",
]

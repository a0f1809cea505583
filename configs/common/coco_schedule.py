# Epoch-based step schedules, independent of the number of iterations.
from detectron2.config import LazyCall as L
from fvcore.common.param_scheduler import MultiStepParamScheduler

# steps of epoch_step_multiplier's schedule: it drops the lr within 1e-6 of the run's length
_RESOLUTION = 1_000_000


def epoch_step_multiplier(total_epochs: float, drop_epochs: float, factor: float = 0.1):
    """lr multiplier: constant, times `factor` from `drop_epochs` of `total_epochs` on, at
    any number of iterations (the multiplier sees the fraction of training done)."""
    return L(MultiStepParamScheduler)(
        values=[1.0, factor],
        milestones=[int(drop_epochs / total_epochs * _RESOLUTION)],
        num_updates=_RESOLUTION,
    )


# COCO train2017 images; the official recipe trains on all of them, with or without boxes.
COCO_TRAIN_IMAGES = 118287

# Epoch-based step schedules, converted to iterations for a dataset size and batch.
import math

from detectron2.config import LazyCall as L
from fvcore.common.param_scheduler import MultiStepParamScheduler


def iterations(epochs: float, num_images: int, batch_size: int) -> int:
    return int(math.ceil(epochs * num_images / batch_size))


def step_schedule(
    total_epochs: float, drop_epochs: float, num_images: int, batch_size: int, factor: float = 0.1
):
    """(max_iter, lr_multiplier): constant lr, times `factor` from `drop_epochs` on."""
    max_iter = iterations(total_epochs, num_images, batch_size)
    drop = iterations(drop_epochs, num_images, batch_size)
    return max_iter, L(MultiStepParamScheduler)(
        values=[1.0, factor], milestones=[drop], num_updates=max_iter
    )


# COCO train2017 images; the official recipe trains on all of them, with or without boxes.
COCO_TRAIN_IMAGES = 118287

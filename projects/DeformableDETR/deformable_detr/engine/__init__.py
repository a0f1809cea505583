"""Training: the training step, hooks that continue a resumed training, random
state, and safe writing into the output directory."""

from .hooks import ResumablePeriodicCheckpointer
from .trainer import DetrTrainer

__all__ = ["DetrTrainer", "ResumablePeriodicCheckpointer"]

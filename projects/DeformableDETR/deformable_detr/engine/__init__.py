"""Training: the training step, hooks that continue a resumed training, random
state, and safe writing into the output directory."""

from .hooks import PeriodicCheckpointer
from .trainer import DetrTrainer

__all__ = ["DetrTrainer", "PeriodicCheckpointer"]

"""Deformable DETR for detectron2. Importing this package registers the
DeformableDETR meta-architecture and the synthetic shapes datasets (generated on
first use), and makes detectron2's checkpointers load weights files as data only
(see deformable_detr.checkpoint) and by the loading rule of deformable_detr.weights
(strict for evaluation and inference, lenient with a report for training)."""

from . import data  # noqa: F401  (registers the synthetic datasets)
from .checkpoint import load_weights_as_data
from .config import add_deformable_detr_config, load_yacs_config
from .meta_arch import DeformableDETR
from .weights import install_loading_rule

load_weights_as_data()
install_loading_rule()

__all__ = ["DeformableDETR", "add_deformable_detr_config", "load_yacs_config"]

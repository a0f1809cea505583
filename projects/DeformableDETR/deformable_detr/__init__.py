"""Deformable DETR for detectron2. Importing this package registers the
DeformableDETR meta-architecture and the synthetic shapes datasets (generated on
first use)."""
from . import synthetic  # noqa: F401  (registers the datasets)
from .config import add_deformable_detr_config, load_yacs_config
from .meta_arch import DeformableDETR

__all__ = ["DeformableDETR", "add_deformable_detr_config", "load_yacs_config"]

"""Deformable DETR for detectron2. Importing this package registers the
DeformableDETR and DETR meta-architectures and the synthetic shapes datasets
(generated on first use), and makes detectron2's checkpointers load weights files
as data only and by the loading rule (deformable_detr.checkpoint: strict for
evaluation and inference, lenient with a report for training).

The package is laid out as detectron2 is: modeling/, solver/, engine/,
checkpoint/, config/, export/, data/, and study/ (the claims study)."""

# _quiet_imports before anything that imports detectron2; data registers the datasets
from . import _moved_modules, _quiet_imports, data  # noqa: F401
from .checkpoint.loading_rule import install_loading_rule
from .config import add_deformable_detr_config, load_yacs_config
from .modeling import DETR, DeformableDETR

install_loading_rule()
_moved_modules.install()

__all__ = ["DETR", "DeformableDETR", "add_deformable_detr_config", "load_yacs_config"]

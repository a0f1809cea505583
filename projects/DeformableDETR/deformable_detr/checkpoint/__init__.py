"""Weights: files loaded as data, the loading rule (strict or lenient), and the
converters of the official release's, HF's and public backbones' checkpoints."""

from .checkpointer import (
    BestModelCheckpointer,
    DetrCheckpointer,
    UnreadableCheckpointError,
    load_weights_file,
)
from .loading_rule import LoadingRule, WeightsMismatchError

__all__ = [
    "BestModelCheckpointer",
    "DetrCheckpointer",
    "LoadingRule",
    "UnreadableCheckpointError",
    "WeightsMismatchError",
    "load_weights_file",
]

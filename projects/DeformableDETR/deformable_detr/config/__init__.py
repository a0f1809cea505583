"""Configs: the yacs keys, loading a LazyConfig or yacs config with checked
overrides, and building what a config describes."""

from .yacs_config import add_deformable_detr_config, load_yacs_config

__all__ = ["add_deformable_detr_config", "load_yacs_config"]

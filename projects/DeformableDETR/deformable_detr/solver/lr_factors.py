"""Per-parameter learning-rate factors of the Deformable DETR recipe."""

from typing import Sequence


class LrFactor:
    """lr factor of a parameter, by name, for detectron2's
    get_default_optimizer_params(lr_factor_func=...): the backbone and the
    layers that predict sampling locations train slower.

    Args:
        backbone_multiplier: factor of parameters under `backbone_prefix`.
        linear_proj_multiplier: factor of parameters whose name contains one of
            `linear_proj_names` (the sampling offsets and reference point layers).
    """

    def __init__(
        self,
        backbone_multiplier: float = 0.1,
        linear_proj_multiplier: float = 0.1,
        backbone_prefix: str = "backbone.",
        linear_proj_names: Sequence[str] = ("sampling_offsets", "reference_points"),
    ):
        self.backbone_multiplier = backbone_multiplier
        self.linear_proj_multiplier = linear_proj_multiplier
        self.backbone_prefix = backbone_prefix
        self.linear_proj_names = tuple(linear_proj_names)

    def __call__(self, name: str) -> float:
        if name.startswith(self.backbone_prefix):
            return self.backbone_multiplier
        if any(key in name for key in self.linear_proj_names):
            return self.linear_proj_multiplier
        return 1.0

"""Public backbone checkpoints in detectron2's names: the official Swin release,
timm's Swin, and timm / MAE ViTs (which share timm's VisionTransformer names), as
the `model.backbone` of this project's Swin and ViT configs.

    converted, dropped = convert_backbone_state_dict(state_dict, "swin")

Every source key is either renamed (a "backbone." or "backbone.net." prefix; timm's
Swin merges patches at the start of a stage, detectron2's at the end of the one
before, so its `layers.i.downsample` is `layers.{i-1}.downsample`) or dropped
because the detector has no such module (classification heads, the final norm, the
ViT class token, Swin's precomputed attention masks); anything else is an error
that names the key.
"""

import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple

import torch

__all__ = [
    "BACKBONE_SOURCES",
    "backbone_keys_without_pretraining",
    "check_fits",
    "convert_backbone_state_dict",
]


@dataclass(frozen=True)
class BackboneSource:
    """A checkpoint layout: `prefix` is added to the kept keys (those matching `keep`,
    after `rename`), keys matching one of `drop` are dropped, and the model's keys
    matching `new_in_detection` are the backbone's that this pretraining lacks."""

    prefix: str
    drop: Tuple[str, ...]
    keep: str
    new_in_detection: str
    rename: Callable[[str], str] = lambda key: key


def _timm_swin_key(key: str) -> str:
    return re.sub(
        r"^layers\.(\d+)\.downsample\.",
        lambda m: f"layers.{int(m.group(1)) - 1}.downsample.",
        key,
    )


_SWIN_KEEP = r"(patch_embed|layers|absolute_pos_embed)(\..*)?"
_SWIN_DROP = (r"head\..*", r"norm\.(weight|bias)", r".*\.attn_mask")
# detectron2 adds per-level output norms to Swin
_SWIN_OUTPUT_NORMS = r"backbone\.norm\d+\..*"

BACKBONE_SOURCES: Dict[str, BackboneSource] = {
    # the official Swin release (github.com/microsoft/Swin-Transformer): detectron2's
    # SwinTransformer uses its names
    "swin": BackboneSource("backbone.", _SWIN_DROP, _SWIN_KEEP, _SWIN_OUTPUT_NORMS),
    # timm's SwinTransformer (timm >= 0.9 layout, e.g. the timm/swin_*_patch4_* weights):
    # its relative position indices are not saved; the model computes its own
    "timm_swin": BackboneSource(
        "backbone.",
        _SWIN_DROP + (r".*\.relative_position_index",),
        _SWIN_KEEP,
        r"backbone\.(norm\d+\..*|layers\.\d+\.blocks\.\d+\.attn\.relative_position_index)",
        rename=_timm_swin_key,
    ),
    # timm's VisionTransformer, and MAE's pretraining (built on it): detectron2's ViT
    # uses its names, under SimpleFeaturePyramid's `net`; ViTDet adds relative
    # positions and the simple feature pyramid
    "vit": BackboneSource(
        "backbone.net.",
        (
            r"head\..*",
            r"(fc_)?norm\.(weight|bias)",
            r"cls_token",
            r"mask_token",
            r"decoder.*",
        ),
        r"(patch_embed|blocks|pos_embed)(\..*)?",
        r"backbone\.(net\.blocks\.\d+\.attn\.rel_pos_[hw]|simfp_\d+\..*)",
    ),
}


def convert_backbone_state_dict(
    state_dict: Dict[str, torch.Tensor], source: str
) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """(converted state dict, dropped source keys) of a backbone checkpoint.

    Args:
        state_dict: the checkpoint's tensors; a {"model": ...} or {"state_dict": ...}
            wrapper is unwrapped.
        source: "swin" (official release), "timm_swin" or "vit" (timm / MAE).
    """
    if source not in BACKBONE_SOURCES:
        raise ValueError(f"source={source!r}; expected one of {sorted(BACKBONE_SOURCES)}")
    for wrapper in ("model", "state_dict"):
        if isinstance(state_dict.get(wrapper), dict):
            state_dict = state_dict[wrapper]
    layout = BACKBONE_SOURCES[source]
    converted, dropped = {}, []
    for key, value in state_dict.items():
        if any(re.fullmatch(pattern, key) for pattern in layout.drop):
            dropped.append(key)
        elif re.fullmatch(layout.keep, key):
            converted[layout.prefix + layout.rename(key)] = value
        else:
            raise ValueError(
                f"key {key!r} is not a {source} backbone key of the known layout; "
                f"expected names matching {layout.keep!r}"
            )
    if not converted:
        raise ValueError(f"no {source} backbone key in the checkpoint")
    return converted, dropped


def backbone_keys_without_pretraining(model: torch.nn.Module, source: str) -> List[str]:
    """The model's backbone state keys that no `source` pretraining has."""
    pattern = BACKBONE_SOURCES[source].new_in_detection
    return [k for k in model.state_dict() if re.fullmatch(pattern, k)]


def check_fits(model: torch.nn.Module, converted: dict, source: str) -> None:
    """Raises ValueError unless `converted` loads into `model` with only the
    detector's own parameters and the backbone's new ones left unfilled."""
    state = model.state_dict()
    unexpected = sorted(k for k in converted if k not in state)
    if unexpected:
        raise ValueError(f"keys the model does not have: {unexpected[:5]}")
    shapes = [k for k in converted if converted[k].shape != state[k].shape]
    if shapes:
        k = shapes[0]
        raise ValueError(
            f"{k}: checkpoint shape {tuple(converted[k].shape)}, model {tuple(state[k].shape)}"
        )
    new = set(backbone_keys_without_pretraining(model, source))
    missing = sorted(k for k in state if k.startswith("backbone.") and k not in converted)
    unfilled = [k for k in missing if k not in new]
    if unfilled:
        raise ValueError(f"backbone keys the checkpoint does not fill: {unfilled[:5]}")

"""Optimizer rules of transformer backbones: layer-wise lr decay (ViT) and no
weight decay on the backbone's norms and position tables (Swin, ViT)."""

from typing import Callable, Dict, List, Sequence

import torch
from detectron2.layers.batch_norm import LayerNorm as ChannelLayerNorm
from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate
from detectron2.solver.build import reduce_param_groups

from .lr_factors import LrFactor

__all__ = ["LayerDecayLrFactor", "detector_param_groups"]

NORM_TYPES = (
    torch.nn.modules.batchnorm._BatchNorm,
    torch.nn.GroupNorm,
    torch.nn.LayerNorm,
    ChannelLayerNorm,
)
# the position tables of detectron2's SwinTransformer and ViT
POSITION_TABLES = (
    "absolute_pos_embed",
    "relative_position_bias_table",
    "pos_embed",
    "rel_pos_h",
    "rel_pos_w",
)


class LayerDecayLrFactor(LrFactor):
    """LrFactor with layer-wise lr decay in the backbone (ViTDet's rule,
    detectron2's get_vit_lr_decay_rate): lr_decay_rate ** (num_layers + 1 - i)
    for ViT block i - 1 (patch and position embeddings: i = 0), 1.0 for the
    feature pyramid; outside the backbone, LrFactor's rules."""

    def __init__(self, num_layers: int, lr_decay_rate: float, **kwargs):
        super().__init__(**kwargs)
        self.num_layers = num_layers
        self.lr_decay_rate = lr_decay_rate

    def __call__(self, name: str) -> float:
        if name.startswith(self.backbone_prefix):
            return get_vit_lr_decay_rate(name, self.lr_decay_rate, self.num_layers)
        return super().__call__(name)


def detector_param_groups(
    model: torch.nn.Module,
    base_lr: float,
    weight_decay: float,
    lr_factor_func: Callable[[str], float],
    no_decay_prefix: str = "backbone.",
    no_decay_names: Sequence[str] = POSITION_TABLES,
) -> List[Dict]:
    """Parameter groups for torch.optim: lr = base_lr * lr_factor_func(name);
    weight decay `weight_decay`, except 0 for the norm layers and the
    parameters named in `no_decay_names` under `no_decay_prefix` (the backbone's
    norms and position tables, as Swin and ViT are trained).

    detectron2's get_default_optimizer_params gives the same groups but for two
    rules: its weight_decay_norm applies to every norm of the model (the recipe
    decays the transformer's), and it does not count detectron2's channel LayerNorm
    (ViT's feature pyramid) as a norm."""
    no_decay = set()
    for module_name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            name = f"{module_name}.{param_name}" if module_name else param_name
            if name.startswith(no_decay_prefix) and (
                isinstance(module, NORM_TYPES) or param_name in no_decay_names
            ):
                no_decay.add(name)
    groups = []
    for name, param in model.named_parameters():  # a shared parameter once
        if not param.requires_grad:
            continue
        group = {
            "params": [param],
            "lr": base_lr * lr_factor_func(name),
            "weight_decay": 0.0 if name in no_decay else weight_decay,
        }
        groups.append(group)
    return reduce_param_groups(groups)

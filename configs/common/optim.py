# AdamW of the recipe: lr 2e-4, weight decay 1e-4 on every parameter, the
# backbone and the sampling-offset / reference-point layers at 0.1x lr.
import torch
from detectron2.config import LazyCall as L
from detectron2.solver.build import get_default_optimizer_params

from deformable_detr.solver.lr_factors import LrFactor

AdamW = L(torch.optim.AdamW)(
    params=L(get_default_optimizer_params)(
        # params.model is set to the model object before instantiating
        base_lr="${..lr}",
        weight_decay_norm="${..weight_decay}",
        weight_decay_bias="${..weight_decay}",
        lr_factor_func=L(LrFactor)(backbone_multiplier=0.1, linear_proj_multiplier=0.1),
    ),
    lr=2e-4,
    betas=(0.9, 0.999),
    weight_decay=1e-4,
)

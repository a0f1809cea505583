"""Measurements of a trained contestant for the study's table: parameters, FLOPs
(fvcore, with the MSDA rule of deformable_detr.export.flops) on the first validation
image, inference images/s at batch 1 and training seconds per epoch."""

import itertools
import logging
import os
import time
from typing import Dict

import torch
from detectron2.config import instantiate

from ..config.build import build_model
from ..export.flops import count_parameters, flop_count_analysis
from .results import median_iteration_seconds
from .runner import FINAL_CHECKPOINT


def iterations_per_epoch(cfg) -> float:
    """Training iterations in one epoch of a config whose schedule is resolved (one
    evaluation every train.eval_epochs epochs, every epoch when that is unset)."""
    return cfg.train.eval_period / (cfg.train.get("eval_epochs") or 1)


def trained_model(cfg, run_dir: str) -> torch.nn.Module:
    """cfg's model with the final weights of run_dir (loaded strictly), in eval mode on
    cfg.train.device."""
    return build_model(cfg, weights=os.path.join(run_dir, FINAL_CHECKPOINT))


@torch.no_grad()
def inference_images_per_second(model, inputs) -> float:
    """Images per second of model (eval mode) over the batch-1 inputs, after one
    untimed warm-up call; post-processing included."""
    model(inputs[:1])
    start = time.perf_counter()
    for x in inputs:
        model([x])
    return len(inputs) / (time.perf_counter() - start)


def measure(cfg, run_dir: str, num_inference_images: int) -> Dict[str, float]:
    """parameters (total), flops (multiply-adds on the first validation image),
    inference_images_per_second (over num_inference_images validation images) and
    train_seconds_per_epoch (median iteration time x iterations per epoch)."""
    model = trained_model(cfg, run_dir)
    loader = instantiate(cfg.dataloader.test)
    inputs = [batch[0] for batch in itertools.islice(loader, num_inference_images)]
    fvcore_logger = logging.getLogger("fvcore")
    level = fvcore_logger.level
    fvcore_logger.setLevel(logging.ERROR)  # one warning per uncounted (element-wise) op
    try:
        with torch.no_grad():
            flops = flop_count_analysis(model, inputs[0]["image"].float().to(cfg.train.device))
            total_flops = flops.total()
    finally:
        fvcore_logger.setLevel(level)
    seconds = median_iteration_seconds(os.path.join(run_dir, "metrics.json"))
    return {
        "parameters": count_parameters(model)[1],
        "flops": total_flops,
        "flops_image_size": list(inputs[0]["image"].shape[1:]),
        "inference_images_per_second": inference_images_per_second(model, inputs),
        "train_seconds_per_iteration": seconds,
        "train_seconds_per_epoch": seconds * iterations_per_epoch(cfg),
    }

#!/usr/bin/env python
"""Trains and evaluates Deformable DETR from a LazyConfig file.

    python tools/lazyconfig_train_net.py --config-file configs/synthetic/deformable_detr_tiny.py
    python tools/lazyconfig_train_net.py --config-file configs/COCO/deformable_detr_r50_50ep.py --num-gpus 8
    python tools/lazyconfig_train_net.py --config-file ... --eval-only train.init_checkpoint=model_final.pth
    python tools/lazyconfig_train_net.py --config-file ... --resume     # continue from the last checkpoint
    python tools/lazyconfig_train_net.py --config-file ... --num-gpus 2 train.device=cpu   # 2 CPU workers (gloo)

Trailing key=value pairs override the config (e.g. train.device=cpu train.max_iter=100).
The config's `train` holds the recipe's loop settings: amp (enabled, dtype),
clip_max_norm, checkpointer period, eval_period, log_period, device.
"""
import logging

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import default_argument_parser, default_setup, default_writers, hooks, launch
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm

from deformable_detr.engine import DetrTrainer

logger = logging.getLogger("deformable_detr")


def ddp(model, cfg, **kwargs):
    """The model wrapped for distributed training when there are several workers;
    on CPU (gloo), DistributedDataParallel takes no device ids."""
    if cfg.train.device == "cpu":
        kwargs["device_ids"] = None
    return create_ddp_model(model, **kwargs)


def do_test(cfg, model):
    if "evaluator" not in cfg.dataloader:
        return {}
    results = inference_on_dataset(model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator))
    print_csv_format(results)
    return results


def do_train(args, cfg):
    model = instantiate(cfg.model)
    logger.info("Model:\n%s", model)
    model.to(cfg.train.device)

    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)
    model = ddp(model, cfg, **cfg.train.ddp)
    trainer = DetrTrainer(
        model,
        train_loader,
        optimizer,
        clip_max_norm=cfg.train.clip_max_norm,
        amp_dtype=cfg.train.amp.dtype if cfg.train.amp.enabled else None,
    )
    checkpointer = DetectionCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if comm.is_main_process() else None,
            hooks.EvalHook(cfg.train.eval_period, lambda: do_test(cfg, model)),
            hooks.PeriodicWriter(default_writers(cfg.train.output_dir, cfg.train.max_iter), period=cfg.train.log_period)
            if comm.is_main_process()
            else None,
        ]
    )
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    start_iter = trainer.iter + 1 if args.resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)


def main(args):
    cfg = LazyConfig.load(args.config_file)
    cfg = LazyConfig.apply_overrides(cfg, args.opts)
    default_setup(cfg, args)
    if args.eval_only:
        model = instantiate(cfg.model)
        model.to(cfg.train.device)
        model = ddp(model, cfg)
        DetectionCheckpointer(model).load(cfg.train.init_checkpoint)
        return do_test(cfg, model)
    do_train(args, cfg)


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,))

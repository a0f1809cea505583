#!/usr/bin/env python
"""Trains and evaluates Deformable DETR from a LazyConfig file.

    python tools/lazyconfig_train_net.py --config-file configs/synthetic/deformable_detr_tiny.py
    python tools/lazyconfig_train_net.py \\
        --config-file configs/COCO/deformable_detr_r50_50ep.py --num-gpus 8
    python tools/lazyconfig_train_net.py --config-file ... \\
        --eval-only train.init_checkpoint=model_final.pth
    # continue from the last checkpoint
    python tools/lazyconfig_train_net.py --config-file ... --resume
    # 2 CPU workers (gloo)
    python tools/lazyconfig_train_net.py --config-file ... --num-gpus 2 train.device=cpu

key=value pairs override the config (e.g. train.device=cpu train.max_iter=100);
flags such as --resume may come before or after them. The config's `train` holds
the recipe's loop settings: amp (enabled, dtype), clip_max_norm, checkpointer
period, eval_period, eval_after_train, log_period, device.

One run at a time per train.output_dir (train.lock in it). Weights files load as
data only and checkpoints are written atomically (see deformable_detr.checkpoint).
"""

import logging
import os
import sys

from detectron2.config import LazyConfig, instantiate
from detectron2.engine import default_argument_parser, default_setup, hooks, launch
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, TensorboardXWriter

from deformable_detr.checkpoint import DetrCheckpointer, UnreadableCheckpointError
from deformable_detr.engine import DetrTrainer
from deformable_detr.output import AtomicJSONWriter, OutputDirInUseError, lock_output_dir
from deformable_detr.tta import with_test_time_augmentation

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
    model = with_test_time_augmentation(model, cfg.train.get("test_aug"))
    results = inference_on_dataset(
        model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator)
    )
    print_csv_format(results)
    return results


def writers(output_dir: str, max_iter: int) -> list:
    """detectron2's default writers, with metrics.json written atomically."""
    return [
        CommonMetricPrinter(max_iter),
        AtomicJSONWriter(os.path.join(output_dir, "metrics.json")),
        TensorboardXWriter(output_dir),
    ]


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
    checkpointer = DetrCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer)
            if comm.is_main_process()
            else None,
            hooks.EvalHook(
                cfg.train.eval_period, lambda: do_test(cfg, model), cfg.train.eval_after_train
            ),
            hooks.PeriodicWriter(
                writers(cfg.train.output_dir, cfg.train.max_iter), period=cfg.train.log_period
            )
            if comm.is_main_process()
            else None,
        ]
    )
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    start_iter = trainer.iter + 1 if checkpointer.resumed_from else 0
    trainer.train(start_iter, cfg.train.max_iter)


def main(args):
    cfg = LazyConfig.load(args.config_file)
    cfg = LazyConfig.apply_overrides(cfg, args.opts)
    # held until the process ends; before default_setup, which writes log.txt and config.yaml there
    lock = lock_output_dir(cfg.train.output_dir) if comm.is_main_process() else None  # noqa: F841
    default_setup(cfg, args)
    if args.eval_only:
        model = instantiate(cfg.model)
        model.to(cfg.train.device)
        model = ddp(model, cfg)
        DetrCheckpointer(model).load(cfg.train.init_checkpoint)
        return do_test(cfg, model)
    do_train(args, cfg)


def parse_args(argv=None):
    """detectron2's arguments, with flags also accepted after the key=value overrides."""
    argv = sys.argv[1:] if argv is None else argv
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    return default_argument_parser().parse_args([a for a in argv if a not in overrides] + overrides)


if __name__ == "__main__":
    args = parse_args()
    try:
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except (OutputDirInUseError, UnreadableCheckpointError) as e:
        sys.exit(f"error: {e}")

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
a key the config does not have is an error naming the closest one, +key=value
adds one. Flags such as --resume may come before or after them. The config's `train` holds
the recipe's loop settings: amp (enabled, dtype), clip_max_norm, checkpointer
period, eval_period, eval_after_train, log_period, device, seed (a fixed one makes a
--resume after a kill end bit-identical to an uninterrupted run on the CPU), and
reuse_freed_memory (on a CPU, malloc keeps freed memory for the next iteration).

One run at a time per train.output_dir (train.lock in it). Weights files load as
data only and checkpoints are written atomically (see deformable_detr.checkpoint.checkpointer).
"""

# deformable_detr first: it imports detectron2 with its import-time warnings silenced
import deformable_detr  # noqa: F401

# isort: split
import logging
import os
import sys

from detectron2.config import instantiate
from detectron2.engine import default_argument_parser, default_setup, hooks, launch
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, TensorboardXWriter
from detectron2.utils.logger import setup_logger

from deformable_detr.checkpoint.checkpointer import (
    BEST_CHECKPOINT,
    BestModelCheckpointer,
    DetrCheckpointer,
    UnreadableCheckpointError,
)
from deformable_detr.checkpoint.loading_rule import ClassNames, LoadingRule
from deformable_detr.config.build import (
    ConfigKindError,
    build_model,
    configured_device,
    load_config,
)
from deformable_detr.config.overrides import ConfigOverrideError
from deformable_detr.data.build import build_train_loader, data_class_names
from deformable_detr.data.coco_json import DatasetError
from deformable_detr.engine.hooks import ResumablePeriodicCheckpointer
from deformable_detr.engine.host_memory import reuse_freed_memory
from deformable_detr.engine.output import (
    AtomicJSONWriter,
    DiskFullError,
    OutputDirInUseError,
    drop_metrics_from,
    lock_output_dir,
)
from deformable_detr.engine.rng import preserved_rng_states
from deformable_detr.engine.trainer import DetrTrainer
from deformable_detr.modeling.sliced_inference import with_sliced_inference
from deformable_detr.modeling.test_time_augmentation import with_test_time_augmentation
from deformable_detr.solver.schedule import resolve_schedule

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
    model = with_sliced_inference(model, cfg)
    model = with_test_time_augmentation(model, cfg.train.get("test_aug"))
    with preserved_rng_states():  # a resumed training then continues exactly
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
    class_names = data_class_names(cfg)
    model = build_model(cfg, weights=None, class_names=class_names).train()
    logger.info("Model:\n%s", model)

    train_loader, num_images = build_train_loader(cfg)
    logger.info(
        "schedule for %d training images: %s", num_images, resolve_schedule(cfg, num_images)
    )
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    model = ddp(model, cfg, **cfg.train.ddp)
    trainer = DetrTrainer(
        model,
        train_loader,
        optimizer,
        clip_max_norm=cfg.train.clip_max_norm,
        amp_dtype=cfg.train.amp.dtype if cfg.train.amp.enabled else None,
    )
    records = {"class_names": ClassNames(class_names)} if class_names else {}
    checkpointer = DetrCheckpointer(model, cfg.train.output_dir, trainer=trainer, **records)
    checkpointer.loading_rule = LoadingRule(
        strict=False,
        class_names=class_names,
        reinit_class_heads=cfg.train.get("reinit_class_heads", False),
    )
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            ResumablePeriodicCheckpointer(checkpointer, **cfg.train.checkpointer)
            if comm.is_main_process()
            else None,
            hooks.EvalHook(
                cfg.train.eval_period, lambda: do_test(cfg, model), cfg.train.eval_after_train
            ),
            hooks.BestCheckpointer(
                cfg.train.eval_period,
                BestModelCheckpointer(model, cfg.train.output_dir, **records),
                "bbox/AP",
                "max",
                file_prefix=BEST_CHECKPOINT,
            )
            if comm.is_main_process()
            and "evaluator" in cfg.dataloader
            and (cfg.train.eval_period or cfg.train.eval_after_train)
            else None,
            hooks.PeriodicWriter(
                writers(cfg.train.output_dir, cfg.train.max_iter), period=cfg.train.log_period
            )
            if comm.is_main_process()
            else None,
        ]
    )
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    start_iter = trainer.iter + 1 if checkpointer.resumed_from else 0
    if comm.is_main_process() and checkpointer.resumed_from:  # the iterations it rewrites
        drop_metrics_from(os.path.join(cfg.train.output_dir, "metrics.json"), start_iter)
    trainer.train(start_iter, cfg.train.max_iter)


def main(args):
    cfg = load_config(args.config_file, args.opts, lazy_only=True)
    # held until the process ends; before default_setup, which writes log.txt and config.yaml there
    lock = lock_output_dir(cfg.train.output_dir) if comm.is_main_process() else None  # noqa: F841
    default_setup(cfg, args)
    # this package's messages (dropped boxes, resuming, ...) also go to log.txt
    setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="deformable_detr")
    if configured_device(cfg) == "cpu" and cfg.train.get("reuse_freed_memory", True):
        reuse_freed_memory()
    if args.eval_only:
        model = build_model(cfg, class_names=data_class_names(cfg, "test"))  # strict
        return do_test(cfg, ddp(model, cfg))
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
    except (
        ConfigKindError,
        ConfigOverrideError,
        DatasetError,
        DiskFullError,
        OutputDirInUseError,
        UnreadableCheckpointError,
    ) as e:
        sys.exit(f"error: {e}")

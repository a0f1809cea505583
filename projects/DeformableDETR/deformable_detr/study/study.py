"""The study, run by run: train (or continue) every contestant, measure it, and
write the evaluations, plot and table after each run, so that a killed study
continues where it stopped and its partial results are always on disk."""

import functools
import json
import os
from typing import List, Optional, Tuple

from detectron2.config import instantiate

from ..config.build import load_config
from ..engine.backbone_pretraining import pretrain_detector_backbone
from ..solver.schedule import resolve_schedule
from . import results, runner
from .measure import iterations_per_epoch, measure
from .plan import SHAPES_STUDY, Contestant, Plan, StudySize

MEASUREMENTS = "measurements.json"


def run_study(
    configs_dir: str,
    train_script: str,
    output_dir: str,
    only: Optional[List[str]] = None,
    size: Optional[StudySize] = None,
    num_inference_images: int = 50,
    plan: Plan = SHAPES_STUDY,
) -> List[dict]:
    """Trains, evaluates and measures the plan's selected contestants (all by default)
    into output_dir/runs/NAME, at their configs' size or at `size`, and writes
    output_dir/{evaluations.csv, results.json, table.md, ap_vs_epochs.png} over
    every run found there. Returns the runs' records."""
    contestants = plan.select(only)
    pretrained = None
    if any(c.pretrained for c in contestants):
        pretrained = pretrained_backbone(configs_dir, output_dir, size, plan)
    for index, contestant in enumerate(contestants, 1):
        run_dir = os.path.join(output_dir, "runs", contestant.name)
        config_file = os.path.join(configs_dir, contestant.config)
        overrides = run_overrides(contestant, size)
        if contestant.pretrained:
            overrides.append(f"train.init_checkpoint={pretrained}")
        state = "complete, not retrained" if runner.is_complete(run_dir) else "training"
        print(f"[study] run {index}/{len(contestants)}: {contestant.label} ({state})", flush=True)
        if not runner.is_complete(run_dir):
            runner.train(train_script, config_file, run_dir, overrides)
        measurements_file = os.path.join(run_dir, MEASUREMENTS)
        if not os.path.exists(measurements_file):
            cfg = _config(config_file, tuple(overrides))
            images = size.inference_images if size else num_inference_images
            results.write_json(measurements_file, measure(cfg, run_dir, images))
        write_outputs(configs_dir, output_dir, size, plan)
    return write_outputs(configs_dir, output_dir, size, plan)


def run_overrides(contestant: Contestant, size: Optional[StudySize]) -> List[str]:
    """key=value overrides of a contestant's training (without its init checkpoint)."""
    return [*contestant.overrides, *(size.overrides(contestant.name) if size else [])]


def pretrained_backbone(
    configs_dir: str, output_dir: str, size: Optional[StudySize], plan: Plan = SHAPES_STUDY
) -> str:
    """output_dir/backbone/pretrained.pth, the backbone every pretrained contestant
    starts from: the backbone of the plan's pretraining config pretrained on its data
    (at `size`) unless the file exists."""
    path = os.path.join(output_dir, "backbone", "pretrained.pth")
    if os.path.exists(path):
        print(f"[study] pretrained backbone: {path} (exists, not retrained)", flush=True)
        return path
    print(f"[study] pretraining the backbone into {path}", flush=True)
    overrides = size.pretraining_overrides() if size else []
    cfg = load_config(os.path.join(configs_dir, plan.pretraining_config), overrides)
    record = pretrain_detector_backbone(cfg, path)
    print(f"[study] backbone pretrained: {record}", flush=True)
    return path


@functools.lru_cache(maxsize=None)
def _config(config_file: str, overrides: Tuple[str, ...]):
    """The contestant's config with the overrides and its schedule in iterations, as
    its training resolves it (for its training images), loaded once per study (read only)."""
    cfg = load_config(config_file, overrides)
    resolve_schedule(cfg, len(instantiate(cfg.dataloader.train.dataset)))
    return cfg


def collect(
    configs_dir: str, output_dir: str, size: Optional[StudySize], plan: Plan = SHAPES_STUDY
) -> List[dict]:
    """The records of every contestant of the plan with a run in output_dir: name,
    label, config, evaluations (by epoch), measurements (once measured)."""
    runs = []
    for contestant in plan.contestants:
        run_dir = os.path.join(output_dir, "runs", contestant.name)
        metrics = os.path.join(run_dir, "metrics.json")
        if not os.path.exists(metrics):
            continue
        overrides = run_overrides(contestant, size)
        cfg = _config(os.path.join(configs_dir, contestant.config), tuple(overrides))
        record = {
            "name": contestant.name,
            "label": contestant.label,
            "config": contestant.config,
            "overrides": overrides,
            "complete": runner.is_complete(run_dir),
            "evaluations": results.read_evaluations(
                metrics, iterations_per_epoch(cfg), cfg.train.max_iter
            ),
        }
        if os.path.exists(os.path.join(run_dir, MEASUREMENTS)):
            with open(os.path.join(run_dir, MEASUREMENTS)) as f:
                record["measurements"] = json.load(f)
        runs.append(record)
    return runs


def write_outputs(
    configs_dir: str, output_dir: str, size: Optional[StudySize], plan: Plan = SHAPES_STUDY
) -> List[dict]:
    runs = collect(configs_dir, output_dir, size, plan)
    results.write_evaluations_csv(os.path.join(output_dir, "evaluations.csv"), runs)
    results.write_json(os.path.join(output_dir, "results.json"), runs)
    with open(os.path.join(output_dir, "table.md"), "w") as f:
        f.write(results.table(runs))
    results.plot(os.path.join(output_dir, "ap_vs_epochs.png"), runs)
    return runs

#!/usr/bin/env python
"""Tree crowns in aerial photographs, in one command: Faster R-CNN + FPN and
Deformable DETR (multi-scale and two-stage) trained on the NEON training image's
400-pixel tiles from one backbone pretrained on its crown crops, evaluated on the
whole validation image by sliced inference, with COCO AP and DeepForest's box
precision and recall (IoU > 0.4), a second seed of each, and the two-stage model
without the pretraining.

    python tools/tree_crowns.py                     # everything (docs/real_images.md)
    python tools/tree_crowns.py --only deformable_detr --only faster_rcnn_fpn

The images are downloaded (the deepforest wheel, by pip) and tiled first unless they
are present. Rerunning the command continues where it stopped and skips finished
runs. OUTPUT gets the study's files (evaluations.csv, results.json, table.md,
ap_vs_epochs.png), summary.md (each model's mean over its two seeds, with both
values) and validation_predictions.jpg, the validation image with the true
crowns (green) and the predictions (red) of the first seed's models.
"""

import argparse
import os
from pathlib import Path

from deformable_detr.study.study import run_study
from deformable_detr.study.tree_crowns import (
    TREE_CROWNS,
    draw_predictions,
    prepare_data,
    seed_summary,
)

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=[c.name for c in TREE_CROWNS.contestants],
        help="run this contestant only (repeatable); the outputs still cover every run found",
    )
    parser.add_argument("--output", default="output/tree_crowns", help="directory of the runs")
    parser.add_argument(
        "--score-threshold",
        type=float,
        default=0.3,
        help="predictions drawn in validation_predictions.jpg score at least this",
    )
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    configs_dir = str(ROOT / "configs")
    os.makedirs(args.output, exist_ok=True)
    prepare_data(configs_dir)
    runs = run_study(
        configs_dir=configs_dir,
        train_script=str(ROOT / "tools" / "lazyconfig_train_net.py"),
        output_dir=args.output,
        only=args.only,
        num_inference_images=1,
        plan=TREE_CROWNS,
    )
    summary = os.path.join(args.output, "summary.md")
    with open(summary, "w") as f:
        f.write(seed_summary(runs))
    complete = {run["name"] for run in runs if run["complete"]}
    drawn = [c for c in TREE_CROWNS.contestants[:3] if c.name in complete]
    if drawn:
        figure = os.path.join(args.output, "validation_predictions.jpg")
        draw_predictions(configs_dir, args.output, drawn, figure, args.score_threshold)
        print(
            f"[trees] {figure}: true crowns green, predictions (score >= "
            f"{args.score_threshold}) red"
        )
    print(Path(args.output, "table.md").read_text())
    print(Path(summary).read_text())


if __name__ == "__main__":
    main()

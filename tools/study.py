#!/usr/bin/env python
"""The paper's claims, measured: DETR, DETR+, Faster R-CNN + FPN and the four
Deformable DETR variants trained on the shapes benchmark, evaluated every epoch.

    python tools/study.py                          # the full study (see docs/study.md)
    python tools/study.py --only detr --only deformable_detr
    python tools/study.py --quick --output output/study_quick   # the pipeline at toy size

Each contestant trains through tools/lazyconfig_train_net.py into OUTPUT/runs/NAME
(checkpoints every epoch, metrics.json, log.txt); rerunning the same command
continues an interrupted study where it stopped and skips finished runs. After
every run OUTPUT gets evaluations.csv (every evaluation), results.json (the same
with each run's measurements), table.md (the Table-1-style table) and
ap_vs_epochs.png (AP and APs against epochs, one line per contestant).
"""

import argparse
import os
from pathlib import Path

from deformable_detr.study import CONTESTANTS, QUICK
from deformable_detr.study.study import run_study

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=[c.name for c in CONTESTANTS],
        help="run this contestant only (repeatable); the outputs still cover every run found",
    )
    parser.add_argument("--output", default="output/study", help="directory of runs and results")
    parser.add_argument(
        "--quick", action="store_true", help="the whole pipeline at toy size (a few minutes)"
    )
    parser.add_argument(
        "--inference-images",
        type=int,
        default=50,
        help="validation images timed at batch 1 for inference images/s",
    )
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.output, exist_ok=True)
    run_study(
        configs_dir=str(ROOT / "configs"),
        train_script=str(ROOT / "tools" / "lazyconfig_train_net.py"),
        output_dir=args.output,
        only=args.only,
        size=QUICK if args.quick else None,
        num_inference_images=args.inference_images,
    )
    print(f"[study] results in {args.output}: table.md, evaluations.csv, results.json, plot:")
    print(os.path.join(args.output, "ap_vs_epochs.png"))
    print(Path(args.output, "table.md").read_text())


if __name__ == "__main__":
    main()

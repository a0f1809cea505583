"""The study's evaluations (read back from each run's metrics.json) and its
outputs: a CSV and a JSON of every evaluation, the Figure-3-style plot of AP
against epochs and the Table-1-style table."""

import csv
import json
import math
import os
from typing import Dict, List

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# DeepForest's box precision and recall (deformable_detr.evaluation), where a run logs them
BOX_PR_METRICS = ("precision", "recall")


def read_evaluations(metrics_json: str, iterations_per_epoch: int, max_iter: int) -> List[Dict]:
    """Every COCO evaluation logged in a training's metrics.json (detectron2's
    EvalHook writes them as "bbox/AP", ...), as {"epoch", "iteration", AP, AP50, ...}
    by epoch; a resumed run's repeated lines count once (the last one wins).
    Periodic evaluations are logged at the epoch's last iteration (epoch * P - 1),
    the one after training at max_iter."""
    by_iteration = {}
    with open(metrics_json) as f:
        for line in f:
            record = json.loads(line)
            if "bbox/AP" in record:
                by_iteration[record["iteration"]] = record
    evaluations = []
    for iteration in sorted(by_iteration):
        record = by_iteration[iteration]
        evaluations.append(
            {
                "epoch": (iteration + (iteration != max_iter)) / iterations_per_epoch,
                "iteration": iteration,
                **{m: record.get(f"bbox/{m}", math.nan) for m in METRICS},
                **{m: record[f"box_pr/{m}"] for m in BOX_PR_METRICS if f"box_pr/{m}" in record},
            }
        )
    return evaluations


def median_iteration_seconds(metrics_json: str) -> float:
    """Median of the training iteration times ("time", detectron2's
    IterationTimer, evaluation excluded) logged in metrics.json; NaN when none
    was (IterationTimer leaves out the first 3 iterations of a run)."""
    times = []
    with open(metrics_json) as f:
        for line in f:
            record = json.loads(line)
            if "time" in record:
                times.append(record["time"])
    if not times:
        return math.nan
    times.sort()
    return times[len(times) // 2]


def _metrics(runs: List[Dict]) -> tuple:
    """METRICS, and BOX_PR_METRICS when some evaluation has them."""
    has_box_pr = any("recall" in e for run in runs for e in run["evaluations"])
    return METRICS + (BOX_PR_METRICS if has_box_pr else ())


def write_evaluations_csv(path: str, runs: List[Dict]) -> None:
    """One row per evaluation: contestant, epoch, iteration and the metrics."""
    metrics = _metrics(runs)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["contestant", "epoch", "iteration", *metrics])
        for run in runs:
            for e in run["evaluations"]:
                writer.writerow(
                    [
                        run["name"],
                        f"{e['epoch']:g}",
                        e["iteration"],
                        *(e.get(m, math.nan) for m in metrics),
                    ]
                )


def write_json(path: str, data) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=1)


def _cell(value, digits: int = 1) -> str:
    return (
        "-"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else (f"{value:.{digits}f}")
    )


def table(runs: List[Dict]) -> str:
    """The Table-1-style Markdown table: each run's last evaluation and measurements
    (box precision and recall after the COCO metrics when the runs have them)."""
    metrics = _metrics(runs)
    lines = [
        "| method | epochs | "
        + " | ".join(m if m in METRICS else f"box {m}" for m in metrics)
        + " | params (M) | FLOPs (G) | train s/epoch | inference img/s |",
        "|---" * (len(metrics) + 6) + "|",
    ]
    for run in runs:
        last = run["evaluations"][-1] if run["evaluations"] else {}
        m = run.get("measurements", {})
        lines.append(
            f"| {run['label']} | {last.get('epoch', 0):g} | "
            + " | ".join(_cell(last.get(k)) for k in metrics)
            + f" | {_cell(m.get('parameters', math.nan) / 1e6, 2)}"
            + f" | {_cell(m.get('flops', math.nan) / 1e9, 2)}"
            + f" | {_cell(m.get('train_seconds_per_epoch'))}"
            + f" | {_cell(m.get('inference_images_per_second'))} |"
        )
    return "\n".join(lines) + "\n"


def plot(path: str, runs: List[Dict]) -> None:
    """The Figure-3-style plot: AP and APs against epochs, one line per contestant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for axis, metric in zip(axes, ("AP", "APs")):
        for run in runs:
            points = [(e["epoch"], e[metric]) for e in run["evaluations"]]
            if points:
                axis.plot(*zip(*points), marker="o", markersize=3, label=run["label"])
        axis.set_xlabel("epoch")
        axis.set_ylabel(f"{metric} (val)")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)

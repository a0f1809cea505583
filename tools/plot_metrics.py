#!/usr/bin/env python
"""Plots the training curves of a detectron2 metrics.json (one JSON object per line)
to one PNG: total loss, the last decoder layer's loss terms (loss_ce, loss_bbox,
loss_giou), the learning rate and, when evaluated, bbox/AP.

    python tools/plot_metrics.py --metrics output/synthetic_tiny/metrics.json \\
        --output docs/images/training_curves_synthetic.png
    python tools/plot_metrics.py --metrics output/synthetic_tiny/metrics.json \\
        --output curves.png --smooth 5

Losses are drawn raw (faint) and, with --smooth N > 1, as a trailing moving
average over N logged points.
"""

import argparse
import json
import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LOSS_TERMS = ("loss_ce", "loss_bbox", "loss_giou")
AP_KEYS = ("bbox/AP", "bbox/AP50", "bbox/AP75")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--metrics", required=True, help="detectron2 metrics.json")
    parser.add_argument("--output", required=True, help="PNG to write")
    parser.add_argument(
        "--smooth", type=int, default=1, help="moving-average window over logged points (1: none)"
    )
    parser.add_argument("--dpi", type=int, default=80)
    return parser.parse_args(argv)


def load_metrics(path: str) -> list:
    """The JSON lines of `path`, sorted by iteration; unreadable lines (a line cut
    by an interrupted run) are skipped."""
    records = []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "iteration" in record:
                records.append(record)
    return sorted(records, key=lambda r: r["iteration"])


def series(records: list, key: str):
    """(iterations, values) of the records that have a finite `key`."""
    points = [
        (r["iteration"], r[key])
        for r in records
        if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])
    ]
    return [p[0] for p in points], [p[1] for p in points]


def moving_average(values: list, window: int) -> list:
    """Trailing mean over up to `window` values."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _plot_losses(ax, records, keys, smooth):
    for key in keys:
        x, y = series(records, key)
        if not x:
            continue
        if smooth > 1:
            line = ax.plot(x, y, alpha=0.3, linewidth=1)[0]
            ax.plot(x, moving_average(y, smooth), color=line.get_color(), label=key)
        else:
            ax.plot(x, y, label=key)
    ax.legend(fontsize="small")


def plot_metrics(
    records: list, output: str, smooth: int = 1, dpi: int = 80, title: str = ""
) -> None:
    """Writes the figure of `records` (see load_metrics) to `output`."""
    panels = [("total_loss", lambda ax: _plot_losses(ax, records, ["total_loss"], smooth))]
    if any(series(records, k)[0] for k in LOSS_TERMS):
        panels.append(
            (
                "loss terms (last decoder layer)",
                lambda ax: _plot_losses(ax, records, LOSS_TERMS, smooth),
            )
        )
    if series(records, "lr")[0]:
        panels.append(("learning rate", lambda ax: ax.plot(*series(records, "lr"))))
    if series(records, "bbox/AP")[0]:
        panels.append(("bbox AP", lambda ax: _plot_ap(ax, records)))

    last = max(r["iteration"] for r in records)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.0), squeeze=False)
    for ax, (name, draw) in zip(axes[0], panels):
        draw(ax)
        ax.set_xlim(0, max(last, 1) * 1.03)
        ax.set_title(name, fontsize="medium")
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    fig.savefig(output, dpi=dpi)
    plt.close(fig)


def _plot_ap(ax, records):
    for key in AP_KEYS:
        x, y = series(records, key)
        if x:
            ax.plot(x, y, marker="o", label=f"{key.split('/')[1]} {y[-1]:.1f}")
    ax.legend(fontsize="small")


def main(argv=None):
    args = parse_args(argv)
    records = load_metrics(args.metrics)
    if not records:
        raise SystemExit(f"no metrics with an 'iteration' in {args.metrics}")
    plot_metrics(records, args.output, smooth=args.smooth, dpi=args.dpi)
    print(f"wrote {args.output} ({len(records)} records)")


if __name__ == "__main__":
    main()

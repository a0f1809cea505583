"""Subprocess runs of tools/lazyconfig_train_net.py (or a script wrapping it) on
the synthetic config, with the synthetic dataset under a given D2EXT_DATASETS."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from .scripts import ROOT

CONFIG = ROOT / "configs" / "synthetic" / "deformable_detr_tiny.py"
MULTISCALE_CONFIG = ROOT / "configs" / "synthetic" / "deformable_detr_tiny_multiscale.py"
TRAIN_NET = ROOT / "tools" / "lazyconfig_train_net.py"
TIMEOUT = 600  # seconds, of a subprocess run


def environment(datasets, **variables) -> dict:
    return dict(os.environ, D2EXT_DATASETS=str(datasets), **variables)


def command(*args, script=TRAIN_NET, config=CONFIG) -> list:
    return [sys.executable, str(script), "--config-file", str(config), *args]


def run(
    args: list, datasets, *, succeeds: bool = True, timeout: float = TIMEOUT, **variables
) -> str:
    """Runs `args` (a command) and returns its stdout and stderr; asserts that
    it succeeded, or with succeeds=False that it failed."""
    result = subprocess.run(
        args,
        env=environment(datasets, **variables),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    output = result.stdout + result.stderr
    assert (result.returncode == 0) == succeeds, (
        f"exit status {result.returncode}:\n{output[-6000:]}"
    )
    return output


def train_net(datasets, *args, succeeds: bool = True, timeout: float = TIMEOUT, **variables) -> str:
    return run(command(*args), datasets, succeeds=succeeds, timeout=timeout, **variables)


def iterations(output_dir: Path) -> list:
    """The iterations metrics.json logged a total_loss for."""
    lines = (output_dir / "metrics.json").read_text().splitlines()
    return [json.loads(line)["iteration"] for line in lines if '"total_loss"' in line]


def last_ap(log: str) -> float:
    """AP of the last evaluation in a training or --eval-only log."""
    return float(log.rsplit("copypaste: ", 1)[1].split(",")[0])


def eval_ap(datasets, config, weights, *overrides) -> float:
    """AP of `weights` on the config's test set, by --eval-only in a subprocess."""
    output_dir = tempfile.mkdtemp(prefix="eval_", dir=Path(weights).parent)
    log = train_net(
        datasets,
        "--config-file",
        str(config),
        "--eval-only",
        "dataloader.test.num_workers=0",
        f"train.output_dir={output_dir}",
        f"train.init_checkpoint={weights}",
        *overrides,
    )
    return last_ap(log)

"""Training runs of the study: each contestant trained by the project's training
script in a subprocess, into its own directory, resumed when it was cut short."""

import os
import subprocess
import sys
from typing import List, Sequence

FINAL_CHECKPOINT = "model_final.pth"


def is_complete(run_dir: str) -> bool:
    """True when the training in run_dir reached its end (its last checkpoint is
    the final one)."""
    try:
        with open(os.path.join(run_dir, "last_checkpoint")) as f:
            return f.read().strip() == FINAL_CHECKPOINT
    except OSError:
        return False


def train_command(
    train_script: str, config_file: str, run_dir: str, overrides: Sequence[str] = ()
) -> List[str]:
    """The command that trains config_file into run_dir, continuing from its last
    checkpoint when there is one (--resume starts from scratch when there is none)."""
    return [
        sys.executable,
        train_script,
        "--config-file",
        config_file,
        "--resume",
        f"train.output_dir={run_dir}",
        *overrides,
    ]


def train(train_script: str, config_file: str, run_dir: str, overrides: Sequence[str] = ()) -> None:
    """Runs the training (its log and detectron2's ETA go to this process's
    stdout and stderr); raises RuntimeError naming the run when it fails."""
    command = train_command(train_script, config_file, run_dir, overrides)
    result = subprocess.run(command)
    if result.returncode != 0:
        raise RuntimeError(
            f"training {config_file} into {run_dir} failed (exit status {result.returncode}); "
            f"its log is {os.path.join(run_dir, 'log.txt')}. Rerun the study to continue from "
            "its last checkpoint."
        )

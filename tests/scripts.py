"""The repository's scripts (tools/, demo/), loaded as modules for tests, and commands
run in a fresh process."""

import importlib.util
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_script(relative_path: str):
    """The module of the script at ROOT / relative_path, e.g. "tools/plot_metrics.py"."""
    path = ROOT / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_command(command: list, timeout: float = 600, **kwargs) -> str:
    """The stdout of `command` run in a fresh process from ROOT; asserts that it
    succeeded (a warm compile cache in the test's own process would hide first-use
    failures)."""
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, **kwargs
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout

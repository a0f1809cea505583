"""deformable_detr.engine.output: atomic file replacement, metrics.json appended
atomically, and the one-training-per-directory lock."""

import json
import os
import signal
import time

import pytest
from detectron2.utils.events import EventStorage

from deformable_detr.engine.output import (
    AtomicJSONWriter,
    OutputDirInUseError,
    atomic_write,
    drop_metrics_from,
    lock_output_dir,
)


def test_atomic_write_keeps_the_old_content_when_interrupted(tmp_path):
    path = tmp_path / "file"
    atomic_write(str(path), lambda f: f.write(b"old"))

    def interrupted(f):
        f.write(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(str(path), interrupted)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_json_writer_appends_whole_lines(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text('{"iteration": -1}\n')  # a previous run's line is kept
    writer = AtomicJSONWriter(str(path))
    with EventStorage(0) as storage:
        for iteration in range(3):
            storage.iter = iteration
            storage.put_scalar("loss", float(iteration), smoothing_hint=False)
            writer.write()
    writer.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["iteration"] for line in lines] == [-1, 0, 1, 2]
    assert lines[-1]["loss"] == 2.0


def test_an_output_dir_takes_one_training_at_a_time(tmp_path):
    (tmp_path / ".model_final.pth.tmp-x1y2").write_bytes(b"left by a killed run")
    lock = lock_output_dir(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.lock"]
    with pytest.raises(
        OutputDirInUseError, match=f"{tmp_path} is in use by another training \\(pid .*--resume"
    ):
        lock_output_dir(str(tmp_path))
    lock.close()  # what the OS does when the process ends, killed or not
    lock_output_dir(str(tmp_path)).close()


def test_a_forked_child_does_not_hold_the_lock(tmp_path):
    """A data-loader worker forked by the training must not keep the directory
    locked after the training process is gone."""
    lock = lock_output_dir(str(tmp_path))
    started, started_write = os.pipe()
    child = os.fork()
    if child == 0:  # a worker that outlives its parent for a while
        os.write(started_write, b"1")
        time.sleep(30)
        os._exit(0)
    try:
        os.read(started, 1)  # the child runs (fork handlers have run)
        lock.close()  # the training process ends; its worker lives on
        lock_output_dir(str(tmp_path)).close()
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        os.close(started), os.close(started_write)


def test_drop_metrics_from_keeps_the_earlier_iterations(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("".join(json.dumps({"iteration": i, "loss": 1.0}) + "\n" for i in range(6)))
    drop_metrics_from(str(path), 3)
    assert [json.loads(line)["iteration"] for line in path.read_text().splitlines()] == [0, 1, 2]
    drop_metrics_from(str(tmp_path / "absent.json"), 0)  # nothing to do

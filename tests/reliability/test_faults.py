"""Faults injected into real trainings (tools/lazyconfig_train_net.py on the
synthetic config, a few iterations, in a subprocess): each is survived without
losing data, see docs/reliability.md."""

import json
import os
import signal
import subprocess
import time

import pytest
import torch

from ..deformable_detr.test_checkpoint import write_malicious_pickle
from ..train_net_runs import ROOT, command, environment, iterations, run, train_net

pytestmark = pytest.mark.slow  # every test here trains or runs a tool end to end

FAULTY_TRAIN_NET = ROOT / "tests" / "reliability" / "faulty_train_net.py"
SMALL = [
    "dataloader.train.total_batch_size=2",
    "dataloader.train.num_workers=0",
    "dataloader.test.num_workers=0",
    "train.eval_period=0",
    "train.eval_after_train=False",
    "train.log_period=1",
]


def _finite_checkpoints(output_dir):
    """Every .pth of the directory loads and holds finite weights only; returns their names."""
    names = sorted(p.name for p in output_dir.glob("*.pth"))
    for name in names:
        state = torch.load(output_dir / name, map_location="cpu", weights_only=True)["model"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), name
    return names


def test_learning_rate_blow_up_stops_before_a_poisoned_checkpoint(tmp_path, synthetic_datasets):
    output_dir = tmp_path / "output"
    common = [*SMALL, f"train.output_dir={output_dir}", "train.checkpointer.period=1"]
    log = train_net(
        synthetic_datasets, *common, "optimizer.lr=1e3", "train.max_iter=4", succeeds=False
    )
    assert "FloatingPointError: non-finite" in log and "before the optimizer step" in log
    stopped_at = int(
        log.split("FloatingPointError: non-finite ")[1].split(" at iteration ")[1].split(",")[0]
    )
    names = _finite_checkpoints(output_dir)
    assert names == [f"model_{i:07d}.pth" for i in range(stopped_at)]
    assert (output_dir / "last_checkpoint").read_text() == names[-1]


def test_nan_image_stops_before_the_forward_pass(tmp_path, synthetic_datasets):
    output_dir = tmp_path / "output"
    args = command(
        *SMALL, f"train.output_dir={output_dir}", "train.max_iter=2", script=FAULTY_TRAIN_NET
    )
    log = run(args, synthetic_datasets, succeeds=False, FAULT="nan-image")
    assert "FloatingPointError: non-finite values (NaN or Inf) in the input image" in log
    assert "at iteration 0" in log
    assert not list(output_dir.glob("*.pth"))


def test_kill_during_checkpoint_write_second_run_and_resume(tmp_path, synthetic_datasets):
    """A finished run is extended and killed (kill -9) while model_final.pth is
    rewritten; meanwhile a second training on the directory is refused; the
    directory resumes with --resume given after the overrides, skipping a
    truncated checkpoint that last_checkpoint names."""
    output_dir = tmp_path / "output"
    common = [*SMALL, f"train.output_dir={output_dir}", "train.checkpointer.period=100"]
    train_net(synthetic_datasets, *common, "train.max_iter=2")
    final = (output_dir / "model_final.pth").read_bytes()

    stalled = tmp_path / "stalled"
    args = command("--resume", *common, "train.max_iter=3", script=FAULTY_TRAIN_NET)
    env = environment(synthetic_datasets, FAULT="stall-in-final-save", STALLED=str(stalled))
    extension = subprocess.Popen(
        args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 300
        while not stalled.exists():
            assert extension.poll() is None, "the extended run ended before writing model_final.pth"
            assert time.monotonic() < deadline, "the extended run did not reach model_final.pth"
            time.sleep(0.5)

        log = train_net(synthetic_datasets, *common, "train.max_iter=3", succeeds=False)
        assert f"error: {output_dir} is in use by another training (pid {extension.pid})" in log
        assert "--resume" in log
    finally:
        if extension.poll() is None:
            os.kill(extension.pid, signal.SIGKILL)
        extension.wait()

    assert (output_dir / "model_final.pth").read_bytes() == final
    assert (
        len(list(output_dir.glob(".model_final.pth.tmp-*"))) == 1
    )  # the half-written file, under another name
    assert (output_dir / "last_checkpoint").read_text() == "model_final.pth"
    for line in (output_dir / "metrics.json").read_text().splitlines():
        json.loads(line)

    # what in-place writing used to leave: last_checkpoint naming a truncated file
    (output_dir / "model_0000002.pth").write_bytes(final[: len(final) // 2])
    (output_dir / "last_checkpoint").write_text("model_0000002.pth")

    log = train_net(synthetic_datasets, *common, "train.max_iter=3", "--resume")
    assert (
        f"cannot resume from {output_dir / 'model_0000002.pth'}: not a readable checkpoint" in log
    )
    assert f"trying {output_dir / 'model_final.pth'}" in log
    assert "Starting training from iteration 2" in log
    assert iterations(output_dir)[-1] == 2
    assert torch.load(output_dir / "model_final.pth", weights_only=True)["iteration"] == 2
    assert not list(output_dir.glob(".*.tmp-*"))


def _start_and_kill_after(checkpoint, args, datasets):
    """Starts a training (`args`, a command), kills it (kill -9) once it wrote `checkpoint`
    and waits for it to end."""
    training = subprocess.Popen(
        args, env=environment(datasets), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 300
        while not checkpoint.exists():
            assert training.poll() is None, f"the training ended before writing {checkpoint}"
            assert time.monotonic() < deadline, f"the training did not write {checkpoint}"
            time.sleep(0.05)
    finally:
        training.kill()
        training.wait()


# a fixed seed, dropout, a forked data-loader worker; a smaller transformer, to be quick
EXACT_RESUME = [
    *SMALL,
    "dataloader.train.num_workers=1",
    "train.seed=5",
    "model.transformer.dropout=0.1",
    "model.transformer.num_encoder_layers=1",
    "model.transformer.num_decoder_layers=2",
    "model.transformer.hidden_dim=32",
    "model.position_embedding.num_pos_feats=16",
    "model.transformer.dim_feedforward=64",
    "model.num_queries=10",
    "model.test_topk=10",
    "train.max_iter=6",
    "train.checkpointer.period=2",
    "train.checkpointer.max_to_keep=1",
]


def test_a_killed_training_resumes_bit_identically(tmp_path, synthetic_datasets):
    """kill -9 in the middle, --resume at once (not refused: the killed run's forked
    data-loader worker does not hold the directory's lock): the final weights equal, bit for
    bit, those of the same training run without interruption; metrics.json has
    every iteration once; max_to_keep counts the killed run's checkpoints; a resume
    with nothing left to train writes model_final.pth."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train_net(synthetic_datasets, *EXACT_RESUME, f"train.output_dir={straight}")
    args = command(*EXACT_RESUME, f"train.output_dir={resumed}")
    _start_and_kill_after(resumed / "model_0000001.pth", args, synthetic_datasets)
    log = train_net(synthetic_datasets, *EXACT_RESUME, f"train.output_dir={resumed}", "--resume")
    assert "training data continues at batch" in log

    expected = torch.load(straight / "model_final.pth", weights_only=True)
    final = torch.load(resumed / "model_final.pth", weights_only=True)
    assert final["iteration"] == expected["iteration"] == 5
    differing = [k for k, v in expected["model"].items() if not torch.equal(v, final["model"][k])]
    assert not differing, f"{len(differing)} of {len(expected['model'])} tensors differ"
    # each iteration once (the killed run's metrics after its checkpoint are dropped)
    start = int(log.split("Starting training from iteration ")[1].split()[0])
    logged = iterations(resumed)
    assert logged == sorted(set(logged)) and logged[-6 + start :] == list(range(start, 6))
    names = sorted(p.name for p in resumed.glob("*.pth"))
    assert names == sorted(p.name for p in straight.glob("*.pth"))
    assert names == ["model_0000005.pth", "model_final.pth"]

    (resumed / "model_final.pth").unlink()
    (resumed / "last_checkpoint").write_text("model_0000005.pth")
    train_net(synthetic_datasets, *EXACT_RESUME, f"train.output_dir={resumed}", "--resume")
    final = torch.load(resumed / "model_final.pth", weights_only=True)
    assert final["iteration"] == 5
    assert all(torch.equal(v, final["model"][k]) for k, v in expected["model"].items())
    assert iterations(resumed) == logged


@pytest.fixture
def malicious(tmp_path):
    path, marker = tmp_path / "model.pkl", tmp_path / "code_ran"
    write_malicious_pickle(path, marker)
    yield path
    assert not marker.exists(), "the weights file ran code"


def _demo(config, *opts):
    image = next((ROOT / "docs" / "images").glob("*.jpg"))
    return [
        *command(
            "--input",
            str(image),
            "--output",
            "unused",
            "--device",
            "cpu",
            script=ROOT / "demo" / "demo.py",
            config=config,
        ),
        "--opts",
        *opts,
    ]


@pytest.mark.parametrize("entry", ["train", "eval-only", "resume", "demo-yaml", "demo-lazyconfig"])
def test_malicious_pickle_is_refused(entry, malicious, tmp_path, synthetic_datasets):
    output_dir = tmp_path / "output"
    common = [*SMALL, f"train.output_dir={output_dir}", "train.max_iter=1"]
    if entry == "resume":
        output_dir.mkdir()
        (output_dir / "last_checkpoint").write_text(malicious.name)
        os.replace(malicious, output_dir / malicious.name)
        malicious = output_dir / malicious.name
    args = {
        "train": command(*common, f"train.init_checkpoint={malicious}"),
        "eval-only": command("--eval-only", *common, f"train.init_checkpoint={malicious}"),
        "resume": command("--resume", *common),
        "demo-yaml": _demo(
            ROOT / "configs" / "synthetic" / "deformable_detr_tiny.yaml",
            "MODEL.WEIGHTS",
            str(malicious),
        ),
        "demo-lazyconfig": _demo(
            ROOT / "configs" / "synthetic" / "deformable_detr_tiny.py",
            f"train.init_checkpoint={malicious}",
        ),
    }[entry]
    log = run(args, synthetic_datasets, succeeds=False)
    assert f"error: {malicious}: not loadable as data (it refers to posix.mknod" in log or (
        entry == "resume" and f"cannot resume from {malicious}: not loadable as data" in log
    ), log[-3000:]


def _default_predictor_refuses(weights):
    from detectron2.engine import DefaultPredictor

    from deformable_detr import load_yacs_config
    from deformable_detr.checkpoint.checkpointer import UnreadableCheckpointError

    cfg = load_yacs_config(str(ROOT / "configs" / "synthetic" / "deformable_detr_tiny.yaml"), [])
    cfg.MODEL.WEIGHTS, cfg.MODEL.DEVICE = str(weights), "cpu"
    with pytest.raises(UnreadableCheckpointError, match="not loadable as data"):
        DefaultPredictor(cfg)


def test_malicious_pickle_is_refused_by_default_predictor(malicious):
    _default_predictor_refuses(malicious)


@pytest.mark.parametrize("entry", ["eval-only", "export", "default-predictor"])
def test_crafted_pyth_runs_nothing_when_torch_is_told_to_run_code(
    entry, tmp_path, synthetic_datasets, monkeypatch
):
    """pycls's .pyth files, which detectron2 reads with a plain torch.load, load as
    data too, also with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 set."""
    path, marker = tmp_path / "model.pyth", tmp_path / "code_ran"
    write_malicious_pickle(path, marker)
    force = {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    if entry == "default-predictor":
        monkeypatch.setenv(*force.popitem())
        _default_predictor_refuses(path)
    else:
        weights = f"train.init_checkpoint={path}"
        args = {
            "eval-only": command("--eval-only", *SMALL, weights),
            "export": command(
                "--format",
                "torchscript",
                "--output",
                str(tmp_path),
                weights,
                script=ROOT / "tools" / "deploy" / "export_model.py",
            ),
        }[entry]
        log = run(args, synthetic_datasets, succeeds=False, **force)
        assert f"{path}: not loadable as data (" in log and "posix.mknod" in log, log[-3000:]
        assert "weights_only=False" not in log
    assert not marker.exists(), "the weights file ran code"


def test_a_mistyped_override_stops_before_anything_is_written(tmp_path, synthetic_datasets):
    output_dir = tmp_path / "output"
    log = train_net(
        synthetic_datasets,
        *SMALL,
        f"train.output_dir={output_dir}",
        "train.max_iters=1",
        succeeds=False,
    )
    assert log.rstrip().splitlines()[-1] == (
        "error: train.max_iters=1: the config has no key train.max_iters (did you mean "
        "train.max_iter?); write +train.max_iters=1 to add it"
    )
    assert not output_dir.exists()


def test_empty_weights_file_is_one_clear_line(tmp_path, synthetic_datasets):
    empty = tmp_path / "model.pth"
    empty.touch()
    log = train_net(
        synthetic_datasets,
        *SMALL,
        f"train.output_dir={tmp_path / 'output'}",
        f"train.init_checkpoint={empty}",
        succeeds=False,
    )
    assert log.rstrip().splitlines()[-1] == (
        f"error: {empty}: the file is empty (0 bytes), it was never written completely; "
        "use another checkpoint"
    )

"""deformable_detr.checkpoint.checkpointer: weights files load as data only (.pth, model-zoo
.pkl, .safetensors), unreadable files give one clear line, checkpoints are
written whole and finite, and resume skips an unreadable checkpoint."""

import os
import pickle
import re

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from safetensors.torch import save_file

import deformable_detr  # noqa: F401  (makes DetectionCheckpointer load data only)
from deformable_detr.checkpoint.checkpointer import (
    BestModelCheckpointer,
    DetrCheckpointer,
    UnreadableCheckpointError,
)


class _RunsCode:
    """Unpickling it creates `marker`: what a crafted weights file can do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mknod, (self.marker,))


def write_malicious_pickle(path, marker):
    """A weights file that creates `marker` when unpickled by pickle.load or
    torch.load(weights_only=False)."""
    with open(path, "wb") as f:
        pickle.dump(
            {"model": {"weight": _RunsCode(marker)}, "__author__": "someone"}, f, protocol=2
        )


def _model():
    torch.manual_seed(0)
    return torch.nn.Linear(3, 2)


def test_pth_safetensors_and_model_zoo_pkl_load(tmp_path):
    source = _model()
    weights = {k: v.detach().clone() + 1 for k, v in source.state_dict().items()}
    torch.save({"model": weights}, tmp_path / "model.pth")
    save_file(weights, str(tmp_path / "model.safetensors"))
    # detectron2's model-zoo ImageNet backbones: a pickled dict of numpy arrays
    with open(tmp_path / "model.pkl", "wb") as f:
        zoo = {
            "model": {k: v.numpy() for k, v in weights.items()},
            "__author__": "torchvision",
            "matching_heuristics": True,
        }
        pickle.dump(zoo, f)
    for name in ("model.pth", "model.safetensors", "model.pkl"):
        model = _model()
        DetectionCheckpointer(model).load(str(tmp_path / name))
        for key, value in weights.items():
            torch.testing.assert_close(model.state_dict()[key], value, msg=name)


def test_caffe2_blobs_pkl_loads(tmp_path):
    weights = {k: v.detach().numpy() + 1 for k, v in _model().state_dict().items()}
    with open(tmp_path / "model.pkl", "wb") as f:
        pickle.dump({"blobs": {**weights, "weight_momentum": np.zeros(1)}}, f, protocol=2)
    model = _model()
    DetectionCheckpointer(model).load(str(tmp_path / "model.pkl"))
    torch.testing.assert_close(model.weight, torch.as_tensor(weights["weight"]))


@pytest.mark.parametrize("suffix", [".pkl", ".pth", ".pyth", ".bin"])
@pytest.mark.parametrize("checkpointer", [DetectionCheckpointer, DetrCheckpointer])
def test_malicious_pickle_runs_nothing(tmp_path, suffix, checkpointer, monkeypatch):
    # torch's switch to load without weights_only where a call does not ask for it
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker, path = tmp_path / "marker", tmp_path / f"evil{suffix}"
    write_malicious_pickle(path, marker)
    with pytest.raises(
        UnreadableCheckpointError, match=f"evil{suffix}: not loadable as data .*posix.mknod"
    ):
        checkpointer(_model()).load(str(path))
    assert not marker.exists()


def test_pycls_pyth_loads_as_data(tmp_path):
    weights = {k: v.detach().clone() + 1 for k, v in _model().state_dict().items()}
    state = {**weights, "bn.num_batches_tracked": torch.tensor(3)}
    torch.save({"model_state": state, "epoch": 5, "cfg": "MODEL: {}"}, tmp_path / "model.pyth")
    model = _model()
    DetectionCheckpointer(model).load(str(tmp_path / "model.pyth"))
    torch.testing.assert_close(model.weight, weights["weight"])
    torch.save({"state_dict": weights}, tmp_path / "other.pyth")
    with pytest.raises(UnreadableCheckpointError, match="other.pyth: .* with 'model_state'"):
        DetectionCheckpointer(_model()).load(str(tmp_path / "other.pyth"))


def _corrupt_files(tmp_path):
    torch.save({"model": _model().state_dict()}, tmp_path / "good.pth")
    content = (tmp_path / "good.pth").read_bytes()
    files = {
        "empty.pth": (b"", "is empty \\(0 bytes\\)"),
        "random.pth": (
            np.random.default_rng(0).bytes(1000),
            "not a readable checkpoint|not loadable as data",
        ),
        "truncated.pth": (content[: len(content) // 2], "not a readable checkpoint"),
        "corrupt.safetensors": (b"\xff" * 64, "not a valid safetensors file"),
    }
    for name, (data, _) in files.items():
        (tmp_path / name).write_bytes(data)
    return {name: expected for name, (_, expected) in files.items()}


def test_unreadable_files_give_one_line_naming_the_file(tmp_path):
    for name, expected in _corrupt_files(tmp_path).items():
        with pytest.raises(UnreadableCheckpointError) as info:
            DetectionCheckpointer(_model()).load(str(tmp_path / name))
        message = str(info.value)
        assert message.startswith(str(tmp_path / name) + ": ") and "\n" not in message
        assert "weights_only" not in message  # never torch's advice to load with weights_only=False
        assert "use another checkpoint" in message
        assert re.search(expected, message), (name, message)


def test_save_is_atomic_and_refuses_non_finite_weights(tmp_path):
    model = _model()
    checkpointer = DetrCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000000", iteration=0)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000000.pth"
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(
        FloatingPointError,
        match="not saving checkpoint model_0000001: 1 weights are non-finite, first weight",
    ):
        checkpointer.save("model_0000001", iteration=1)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000000.pth"]


def test_a_kill_during_save_keeps_the_old_file(tmp_path, monkeypatch):
    checkpointer = DetrCheckpointer(_model(), str(tmp_path))
    checkpointer.save("model_final", iteration=0)
    before = (tmp_path / "model_final.pth").read_bytes()

    def interrupted_save(data, f):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save("model_final", iteration=1)
    assert (tmp_path / "model_final.pth").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_final.pth"]


def test_non_finite_checkpoint_is_refused_at_load(tmp_path):
    state = _model().state_dict()
    state["bias"][1] = float("inf")
    torch.save({"model": state}, tmp_path / "poisoned.pth")
    with pytest.raises(
        UnreadableCheckpointError, match="poisoned.pth: 1 weights are NaN or Inf \\(first bias\\)"
    ):
        DetrCheckpointer(_model()).load(str(tmp_path / "poisoned.pth"))


def test_resume_skips_an_unreadable_last_checkpoint(tmp_path, caplog):
    source = _model()
    DetrCheckpointer(source, str(tmp_path)).save("model_0000004", iteration=4)
    (tmp_path / "model_0000009.pth").write_bytes(b"truncated")
    (tmp_path / "last_checkpoint").write_text("model_0000009.pth")
    model = torch.nn.Linear(3, 2)
    checkpointer = DetrCheckpointer(model, str(tmp_path))
    extra = checkpointer.resume_or_load("", resume=True)
    assert extra["iteration"] == 4 and checkpointer.resumed_from == str(
        tmp_path / "model_0000004.pth"
    )
    torch.testing.assert_close(model.weight, source.weight)
    assert "cannot resume from" in caplog.text and "model_0000009.pth" in caplog.text


def test_resume_never_takes_the_best_checkpoint(tmp_path, caplog):
    """model_best.pth holds an earlier point of the training: written after the last
    checkpoint it is not named in last_checkpoint, nor taken when that file is unreadable."""
    source = _model()
    DetrCheckpointer(source, str(tmp_path)).save("model_0000004", iteration=4)
    (tmp_path / "model_0000009.pth").write_bytes(b"truncated")
    (tmp_path / "last_checkpoint").write_text("model_0000009.pth")
    BestModelCheckpointer(_model(), str(tmp_path)).save("model_best", iteration=2)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    checkpointer = DetrCheckpointer(torch.nn.Linear(3, 2), str(tmp_path))
    assert checkpointer.resume_or_load("", resume=True)["iteration"] == 4
    assert checkpointer.resumed_from == str(tmp_path / "model_0000004.pth")


def test_resume_without_a_checkpoint_loads_the_initial_weights(tmp_path):
    source = _model()
    torch.save({"model": source.state_dict(), "iteration": 99}, tmp_path / "init.pth")
    model = torch.nn.Linear(3, 2)
    checkpointer = DetrCheckpointer(model, str(tmp_path / "new"))
    checkpointer.resume_or_load(str(tmp_path / "init.pth"), resume=True)
    assert checkpointer.resumed_from is None  # training starts at iteration 0
    torch.testing.assert_close(model.weight, source.weight)


def test_resume_without_a_readable_checkpoint_stops(tmp_path):
    (tmp_path / "model_final.pth").write_bytes(b"")
    (tmp_path / "last_checkpoint").write_text("model_final.pth")
    with pytest.raises(
        UnreadableCheckpointError, match="--resume: none of the 1 checkpoints in .* can be read"
    ):
        DetrCheckpointer(_model(), str(tmp_path)).resume_or_load("", resume=True)

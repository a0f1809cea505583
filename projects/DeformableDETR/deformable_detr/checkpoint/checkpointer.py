"""Weights files as data: loading never runs code from a file, a checkpoint is
never half-written, poisoned (non-finite) or silently skipped on resume.

Loading, for DetrCheckpointer and for every DetectionCheckpointer once
deformable_detr.checkpoint.loading_rule.install_loading_rule ran (importing
`deformable_detr` runs it, so DefaultPredictor, which builds its own
DetectionCheckpointer, is covered too):

- ``.pth``, pycls's ``.pyth`` and other torch files: ``torch.load(weights_only=True)``,
  also when ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is set;
- ``.pkl`` (detectron2's model-zoo backbones: pickled dicts of numpy arrays):
  an unpickler that admits numpy arrays, numbers, strings and plain containers only;
- ``.safetensors``: safetensors.

A file that is empty, truncated, not a checkpoint or holds other objects raises
:class:`UnreadableCheckpointError`, one line naming the file and what to do.
"""

import logging
import os
import pickle
from typing import Any, Dict, List, Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.file_io import PathManager

from ..engine.output import atomic_write

__all__ = [
    "BEST_CHECKPOINT",
    "BestModelCheckpointer",
    "DetrCheckpointer",
    "UnreadableCheckpointError",
    "load_file_as_data",
    "load_pickle_as_data",
    "torch_load_as_data",
]

logger = logging.getLogger(__name__)

# What numpy arrays and scalars pickle to (numpy 1 and 2 module names), and OrderedDict.
_PICKLE_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
    ("collections", "OrderedDict"),
}


# the name of the best checkpoint (hooks.BestCheckpointer's file_prefix), never resumed from
BEST_CHECKPOINT = "model_best"


class UnreadableCheckpointError(RuntimeError):
    """A weights file that cannot be loaded as data: empty, truncated, corrupt,
    not a checkpoint, or holding objects other than arrays and plain containers."""


class _DataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which is not weights data")
        return super().find_class(module, name)


def load_pickle_as_data(filename: str) -> Any:
    """Unpickles a file that may hold only numpy arrays and scalars, numbers,
    strings and plain containers; any other object is refused before it is built."""
    with PathManager.open(filename, "rb") as f:
        return _DataUnpickler(f, encoding="latin1").load()


def _load(filename: str) -> Any:
    if filename.endswith(".pkl"):
        return load_pickle_as_data(filename)
    if filename.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(filename)
    with PathManager.open(filename, "rb") as f:
        return torch.load(f, map_location="cpu", weights_only=True)


def load_weights_file(filename: str) -> Any:
    """The content of a weights file (.pth/.pkl/.safetensors), loaded as data.

    Raises:
        UnreadableCheckpointError: one line naming the file, what is wrong and what to do.
    """
    if not os.path.isfile(filename):
        raise UnreadableCheckpointError(f"{filename}: no such file; check the path")
    if os.path.getsize(filename) == 0:
        raise UnreadableCheckpointError(
            f"{filename}: the file is empty (0 bytes), it was never written completely; use "
            "another checkpoint"
        )
    try:
        return _load(filename)
    except Exception as e:
        raise UnreadableCheckpointError(f"{filename}: {_reason(e)}") from e


def _reason(error: Exception) -> str:
    """What went wrong, in one line, without torch's advice to load with
    weights_only=False (which would run whatever the file holds)."""
    if isinstance(error, pickle.UnpicklingError):
        detail = _unpickler_detail(str(error))
        return (
            f"not loadable as data ({detail}): weights files may hold only tensors, arrays, "
            "numbers and plain containers; re-save the state_dict alone where you trust the file, "
            "or use another checkpoint"
        )
    if type(error).__name__ == "SafetensorError":
        return (
            f"not a valid safetensors file ({error}); the file is corrupt or truncated, "
            "use another checkpoint"
        )
    detail = str(error).splitlines()[0] if str(error) else type(error).__name__
    return (
        f"not a readable checkpoint ({detail}); the file is truncated or corrupt, "
        "use another checkpoint"
    )


def _unpickler_detail(message: str) -> str:
    """The line of torch's weights_only error that says what was refused."""
    lines = [line.split("WeightsUnpickler error:")[-1].strip() for line in message.splitlines()]
    advice = (
        "weights_only",
        "Weights only load failed",
        "Please file an issue",
        "Check the documentation",
    )
    return next(
        (line for line in lines if line and not any(a in line for a in advice)), "a refused object"
    )


def _model_zoo_checkpoint(data: Any, filename: str) -> Dict[str, Any]:
    """What DetectionCheckpointer makes of a .pkl: detectron2 model-zoo files as
    they are, Caffe2/Detectron1 blobs renamed by name-matching heuristics."""
    if not isinstance(data, dict):
        raise UnreadableCheckpointError(
            f"{filename}: expected a pickled dict of arrays, found {type(data).__name__}"
        )
    if "model" in data and "__author__" in data:
        return data
    data = data.get("blobs", data)
    data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
    return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}


_detectron2_load_file = DetectionCheckpointer._load_file


def _pycls_checkpoint(data: Any, filename: str) -> Dict[str, Any]:
    """What DetectionCheckpointer makes of a pycls ``.pyth`` file: its model_state,
    renamed by name-matching heuristics."""
    if not isinstance(data, dict) or not isinstance(data.get("model_state"), dict):
        raise UnreadableCheckpointError(
            f"{filename}: a .pyth file must be a pycls checkpoint, a dict with 'model_state'"
        )
    state = {k: v for k, v in data["model_state"].items() if not k.endswith("num_batches_tracked")}
    return {"model": state, "__author__": "pycls", "matching_heuristics": True}


def load_file_as_data(self, filename: str) -> Dict[str, Any]:
    """DetectionCheckpointer._load_file with every file loaded as data."""
    if filename.endswith(".pkl"):
        return _model_zoo_checkpoint(load_weights_file(filename), filename)
    if filename.endswith(".pyth"):  # detectron2 reads these with a plain torch.load
        return _pycls_checkpoint(load_weights_file(filename), filename)
    # detectron2's handling of "model" and URL queries, reading through _torch_load
    return _detectron2_load_file(self, filename)


def torch_load_as_data(self, filename: str) -> Any:
    """DetectionCheckpointer._torch_load, loading the file as data."""
    return load_weights_file(filename)


def _non_finite_tensors(state_dict: Dict[str, Any]) -> List[str]:
    return [
        name
        for name, value in state_dict.items()
        if isinstance(value, torch.Tensor)
        and value.is_floating_point()
        and not torch.isfinite(value).all()
    ]


class DetrCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer whose checkpoints are whole and finite:

    - save() writes a temporary file, fsyncs and renames it; ``last_checkpoint``
      is rewritten the same way, after the rename. A model with non-finite
      weights is not saved (FloatingPointError).
    - a checkpoint with non-finite weights is refused at load.
    - resume_or_load(resume=True) tries ``last_checkpoint``'s file, then the
      other checkpoints of the directory, newest first, saying which it skips
      and why; when none can be read it stops instead of starting over.
    """

    resumed_from: Optional[str] = None  # the checkpoint resume_or_load resumed from

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        non_finite = _non_finite_tensors(data["model"])
        if non_finite:
            raise FloatingPointError(
                f"not saving checkpoint {name}: {len(non_finite)} weights are non-finite, first "
                f"{non_finite[0]}"
            )
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write(
            os.path.join(self.save_dir, "last_checkpoint"),
            lambda f: f.write(last_filename_basename.encode()),
        )

    _torch_load = torch_load_as_data

    def _load_file(self, filename: str) -> Dict[str, Any]:
        checkpoint = load_file_as_data(self, filename)
        non_finite = _non_finite_tensors(checkpoint.get("model", {}))
        if non_finite:
            raise UnreadableCheckpointError(
                f"{filename}: {len(non_finite)} weights are NaN or Inf (first {non_finite[0]}); "
                "use another checkpoint"
            )
        return checkpoint

    def load(self, path: str, *args, **kwargs) -> Dict[str, Any]:
        try:
            return super().load(path, *args, **kwargs)
        finally:
            self._parsed_url_during_load = (
                None  # DetectionCheckpointer leaves it set when loading fails
            )

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        candidates = self._resume_candidates() if resume else []
        if not candidates:
            return self.load(path, checkpointables=[])
        for index, candidate in enumerate(candidates):
            try:
                if not os.path.isfile(candidate):
                    raise UnreadableCheckpointError(f"{candidate}: no such file")
                checkpoint = self.load(candidate)
                self.resumed_from = candidate
                return checkpoint
            except UnreadableCheckpointError as e:
                following = (
                    f"trying {candidates[index + 1]}"
                    if index + 1 < len(candidates)
                    else "none left"
                )
                logger.warning(f"cannot resume from {e}; {following}")
        raise UnreadableCheckpointError(
            f"--resume: none of the {len(candidates)} checkpoints in {self.save_dir} can be read "
            "(see the warnings above); to start over, remove them and last_checkpoint or choose "
            "another train.output_dir"
        )

    def _resume_candidates(self) -> List[str]:
        """last_checkpoint's file first (also when it is missing: it gets reported),
        then the directory's other .pth files, most recently written first, except
        model_best.pth, which holds an earlier point of the training."""
        if not os.path.isdir(self.save_dir):
            return []
        named = [self.get_checkpoint_file()] if self.has_checkpoint() else []
        best = os.path.join(self.save_dir, f"{BEST_CHECKPOINT}.pth")
        others = sorted(
            set(self.get_all_checkpoint_files()) - set(named) - {best},
            key=os.path.getmtime,
            reverse=True,
        )
        return named + others


class BestModelCheckpointer(DetrCheckpointer):
    """Writes model_best.pth (for detectron2's hooks.BestCheckpointer: the weights of
    the best evaluation so far) beside a training's checkpoints without naming it in
    last_checkpoint, so that --resume continues from the last checkpoint, not the best."""

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        pass

"""The random-number generators of a process (Python's random, NumPy's global
generator, torch's CPU and CUDA generators) as a checkpointable state of tensors
and numbers (loadable with ``torch.load(weights_only=True)``), and context
managers that seed them or leave them as they were."""

import contextlib
import random
from typing import Any, Dict, Iterator

import numpy as np
import torch

__all__ = ["rng_states", "restore_rng_states", "preserved_rng_states", "seeded_rng"]


def rng_states() -> Dict[str, Any]:
    """The state of every generator: ``python`` and ``numpy`` as (624 + 1,) int64
    tensors plus their extra fields, ``torch`` (uint8 tensor), ``cuda`` (one
    uint8 tensor per initialised device, empty without CUDA)."""
    version, python_state, gauss = random.getstate()
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "python": torch.tensor(python_state, dtype=torch.int64),
        "python_version": version,
        "python_gauss": gauss,
        "numpy": torch.from_numpy(keys.astype(np.int64)),
        "numpy_position": int(position),
        "numpy_gauss": (int(has_gauss), float(cached_gaussian)),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
    }


def restore_rng_states(state: Dict[str, Any]) -> None:
    """Sets every generator to `state` (from :func:`rng_states`); CUDA states only
    when the process has as many devices as the state."""
    random.setstate(
        (state["python_version"], tuple(state["python"].tolist()), state["python_gauss"])
    )
    has_gauss, cached_gaussian = state["numpy_gauss"]
    np.random.set_state(
        (
            "MT19937",
            state["numpy"].numpy().astype(np.uint32),
            state["numpy_position"],
            has_gauss,
            cached_gaussian,
        )
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def preserved_rng_states() -> Iterator[None]:
    """Whatever the block draws, the generators are as before it afterwards."""
    state = rng_states()
    try:
        yield
    finally:
        restore_rng_states(state)


@contextlib.contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Python's, NumPy's and torch's CPU generators seeded with `seed` (0 <= seed < 2**32)
    inside the block, as before it afterwards."""
    with preserved_rng_states():
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        yield

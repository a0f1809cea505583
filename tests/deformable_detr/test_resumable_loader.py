import itertools
import random

import numpy as np
import pytest
import torch

from deformable_detr.data import build_resumable_train_loader
from deformable_detr.engine.rng import preserved_rng_states, restore_rng_states, rng_states


def _dataset(size=13):
    """Dataset dicts, wider than high or not by index."""
    return [
        {"file_name": f"{i}.jpg", "width": 20 if i % 3 else 10, "height": 15} for i in range(size)
    ]


def _draws(record):
    """A mapper whose output is its record and one draw of each random generator."""
    return {
        "file_name": record["file_name"],
        "landscape": record["width"] > record["height"],
        "draws": (random.random(), float(np.random.rand()), float(torch.rand(()))),
    }


def _loader(num_workers=0, **kwargs):
    return build_resumable_train_loader(
        _dataset(), mapper=_draws, total_batch_size=4, num_workers=num_workers, seed=3, **kwargs
    )


def _take(loader, count):
    return list(itertools.islice(iter(loader), count))


@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_resumed_loader_continues_with_the_same_batches(num_workers):
    expected = _take(_loader(), 12)
    interrupted = _loader(num_workers)
    assert _take(interrupted, 5) == expected[:5]  # workers change nothing
    resumed = _loader(num_workers)
    resumed.load_state_dict(interrupted.state_dict())
    assert resumed.state_dict() == {"seed": 3, "batches": 5}
    assert _take(resumed, 7) == expected[5:]


def test_batches_group_aspect_ratios_and_cover_each_epoch():
    batches = _take(_loader(), 12)
    assert all(len({item["landscape"] for item in batch}) == 1 for batch in batches)
    names = [item["file_name"] for batch in batches for item in batch]
    assert len(set(names[:8])) == 8  # no image twice in an epoch's first batches
    ungrouped = _take(_loader(aspect_ratio_grouping=False), 3)
    flat = [item["file_name"] for batch in ungrouped for item in batch]
    assert len(set(flat)) == 12  # 12 of the 13 images of the first epoch, in order


def test_mapping_leaves_the_main_process_generators_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    _take(_loader(), 3)
    assert torch.equal(torch.rand(3), expected)


def test_rng_states_restore_after_a_weights_only_round_trip(tmp_path):
    np.random.seed(1)
    np.random.normal()  # leaves a cached gaussian in NumPy's state
    state = rng_states()
    torch.save({"rng": state}, tmp_path / "state.pth")
    expected = (random.random(), np.random.normal(), float(torch.rand(())))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_rng_states(torch.load(tmp_path / "state.pth", weights_only=True)["rng"])
    assert (random.random(), np.random.normal(), float(torch.rand(()))) == expected
    restore_rng_states(state)
    with preserved_rng_states():
        torch.rand(5), random.random(), np.random.rand()
    assert (random.random(), np.random.normal(), float(torch.rand(()))) == expected


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="dataset must be a list of dataset dicts"):
        build_resumable_train_loader(tuple(_dataset()), mapper=_draws, total_batch_size=2)
    with pytest.raises(ValueError, match="total_batch_size 0 must be a positive multiple"):
        build_resumable_train_loader(_dataset(), mapper=_draws, total_batch_size=0)
    with pytest.raises(ValueError, match="dataset is empty"):
        build_resumable_train_loader([], mapper=_draws, total_batch_size=2)

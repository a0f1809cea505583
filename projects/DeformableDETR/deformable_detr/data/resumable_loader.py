"""A training data loader that a resumed training continues exactly where the
interrupted one stopped: same images, same order, same augmentation.

detectron2's train loader cannot: its sampler and its workers' random streams
start over with a new process, and its aspect-ratio grouping buffers images
after the workers. Here the main process plans the batches from indices alone
(shuffled per epoch from (seed, epoch), grouped by aspect ratio from the
dataset dicts' width and height), the workers only map them, and every random
draw of the mapper is seeded from (seed, the sample's position in the stream).
The state is two numbers, the seed and the batches handed out; the trainer
saves them in its checkpoints (see DetrTrainer.state_dict).
"""

import itertools
import logging
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from detectron2.data.build import trivial_batch_collator
from detectron2.data.common import DatasetFromList
from detectron2.utils import comm
from torch.utils.data import DataLoader, Dataset

from ..engine.rng import seeded_rng

__all__ = ["ResumableTrainLoader", "build_resumable_train_loader"]

_EPOCH, _SAMPLE = 0, 1  # keep the seeds of the shuffles and of the samples apart


def _derived_seed(seed: int, kind: int, number: int) -> int:
    return int(np.random.SeedSequence([seed, kind, number]).generate_state(1)[0])


class _BatchPlan:
    """This rank's batches, as lists of (position, index): position counts the
    samples of the global stream (epoch after epoch of shuffled indices, shared by
    the ranks as detectron2's TrainingSampler does), index is the dataset's."""

    def __init__(self, size: int, batch_size: int, buckets: List[int], seed: int):
        self.size, self.batch_size, self.buckets, self.seed = size, batch_size, buckets, seed
        self.rank, self.world_size = comm.get_rank(), comm.get_world_size()
        self.start = 0  # batches to skip: the ones the interrupted training consumed

    def _samples(self) -> Iterator[Tuple[int, int]]:
        epoch, order = -1, []
        for position in itertools.count(self.rank, self.world_size):
            if position // self.size != epoch:
                epoch = position // self.size
                generator = torch.Generator().manual_seed(_derived_seed(self.seed, _EPOCH, epoch))
                order = torch.randperm(self.size, generator=generator).tolist()
            yield position, order[position % self.size]

    def _batches(self) -> Iterator[List[Tuple[int, int]]]:
        filling: Dict[int, list] = {}
        for position, index in self._samples():
            batch = filling.setdefault(self.buckets[index], [])
            batch.append((position, index))
            if len(batch) == self.batch_size:
                yield batch[:]
                batch.clear()

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        return itertools.islice(self._batches(), self.start, None)


class _MappedSamples(Dataset):
    """dataset[index] mapped with the random generators seeded from (seed, position)."""

    def __init__(self, dataset: Dataset, mapper: Callable[[dict], Any], seed: int):
        self.dataset, self.mapper, self.seed = dataset, mapper, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, sample: Tuple[int, int]) -> Any:
        position, index = sample
        with seeded_rng(_derived_seed(self.seed, _SAMPLE, position)):
            return self.mapper(self.dataset[index])


class ResumableTrainLoader:
    """Iterates over this rank's batches (lists of mapped dicts) without end;
    :meth:`state_dict` / :meth:`load_state_dict` save and restore where it is.
    Exact for the same dataset, batch size and number of ranks."""

    def __init__(
        self,
        dataset: list,
        mapper: Callable[[dict], Any],
        batch_size: int,
        buckets: List[int],
        num_workers: int,
        seed: int,
    ):
        self.plan = _BatchPlan(len(dataset), batch_size, buckets, seed)
        self.samples = _MappedSamples(DatasetFromList(dataset, copy=False), mapper, seed)
        self.num_workers = num_workers
        self.batches = 0  # handed out so far

    def __iter__(self) -> Iterator[list]:
        self.plan.start = self.batches
        loader = DataLoader(
            self.samples,
            batch_sampler=self.plan,
            num_workers=self.num_workers,
            collate_fn=trivial_batch_collator,
            # its own generator: starting the workers draws nothing from torch's global one
            generator=torch.Generator().manual_seed(self.plan.seed),
        )
        for batch in loader:
            self.batches += 1
            yield batch

    def state_dict(self) -> Dict[str, int]:
        return {"seed": self.plan.seed, "batches": self.batches}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        self.plan.seed = self.samples.seed = int(state["seed"])
        self.batches = int(state["batches"])
        logging.getLogger(__name__).info(
            f"training data continues at batch {self.batches} (seed {self.plan.seed})"
        )


def build_resumable_train_loader(
    dataset: list,
    *,
    mapper: Callable[[dict], Any],
    total_batch_size: int,
    aspect_ratio_grouping: bool = True,
    num_workers: int = 0,
    seed: Optional[int] = None,
) -> ResumableTrainLoader:
    """detectron2's build_detection_train_loader (same arguments, a list of dataset
    dicts), resumable.

    Args:
        aspect_ratio_grouping: batch images wider than high apart from the others.
        seed: of the data order and the augmentation; None: one drawn from NumPy's
            global generator (which train.seed seeds), the same on every rank.
    """
    if not isinstance(dataset, list):
        raise TypeError(f"dataset must be a list of dataset dicts, got {type(dataset).__name__}")
    if not dataset:
        raise ValueError("dataset is empty: there is nothing to train on")
    world_size = comm.get_world_size()
    if total_batch_size <= 0 or total_batch_size % world_size:
        raise ValueError(
            f"total_batch_size {total_batch_size} must be a positive multiple of the number of "
            f"workers ({world_size})"
        )
    buckets = [
        int(record["width"] > record["height"]) if aspect_ratio_grouping else 0
        for record in dataset
    ]
    return ResumableTrainLoader(
        dataset,
        mapper,
        total_batch_size // world_size,
        buckets,
        num_workers,
        comm.shared_random_seed() if seed is None else seed,
    )

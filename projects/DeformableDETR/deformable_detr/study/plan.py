"""What the study runs: the contestants and the toy size of --quick."""

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from ..data.shapes_benchmark import QUICK_DATASET_NAMES


@dataclass(frozen=True)
class Contestant:
    """name: the run's directory and --only value; label: its name in the table and
    plot; config: a LazyConfig path relative to the repository's configs/."""

    name: str
    label: str
    config: str


# the configs' shared part, whose backbone_pretraining every contestant starts from
BASE_CONFIG = "shapes_benchmark/base.py"

CONTESTANTS = (
    Contestant("faster_rcnn_fpn", "Faster R-CNN + FPN", "shapes_benchmark/faster_rcnn_fpn.py"),
    Contestant("detr", "DETR", "shapes_benchmark/detr.py"),
    Contestant("detr_plus", "DETR+", "shapes_benchmark/detr_plus.py"),
    Contestant(
        "deformable_detr_single_scale",
        "Deformable DETR (single-scale)",
        "shapes_benchmark/deformable_detr_single_scale.py",
    ),
    Contestant("deformable_detr", "Deformable DETR", "shapes_benchmark/deformable_detr.py"),
    Contestant(
        "deformable_detr_box_refine",
        "+ iterative box refinement",
        "shapes_benchmark/deformable_detr_box_refine.py",
    ),
    Contestant(
        "deformable_detr_two_stage", "++ two-stage", "shapes_benchmark/deformable_detr_two_stage.py"
    ),
)


@dataclass(frozen=True)
class StudySize:
    """A size other than the configs' own: datasets, batch and epochs per
    contestant (`epochs[name]`, else `default_epochs`); iterations, evaluation and
    checkpoint periods follow from the configs' epoch schedule at this batch."""

    train_dataset: str
    val_dataset: str
    batch_size: int
    default_epochs: int
    epochs: Dict[str, int] = field(default_factory=dict)
    inference_images: int = 1
    pretraining_epochs: int = 1

    def pretraining_overrides(self) -> List[str]:
        """key=value overrides of the base config's backbone_pretraining at this size."""
        return [
            f"backbone_pretraining.train_dataset={self.train_dataset}",
            f"backbone_pretraining.val_dataset={self.val_dataset}",
            f"backbone_pretraining.epochs={self.pretraining_epochs}",
        ]

    def overrides(self, name: str) -> List[str]:
        """key=value overrides that train contestant `name` at this size."""
        return [
            f"dataloader.train.dataset.dataset_dicts.names={self.train_dataset}",
            f"dataloader.test.dataset.names={self.val_dataset}",
            f"dataloader.train.total_batch_size={self.batch_size}",
            f"train.epochs={self.epochs.get(name, self.default_epochs)}",
            "train.log_period=1",
        ]


# The whole pipeline at toy size (tests/CI): 4 training images at batch 1, 4 iterations
# per epoch (so that detectron2's IterationTimer, which skips 3, times one), DETR 2 epochs.
QUICK = StudySize(
    train_dataset=QUICK_DATASET_NAMES[0],
    val_dataset=QUICK_DATASET_NAMES[1],
    batch_size=1,
    default_epochs=1,
    epochs={"detr": 2},
)


def select(names: Optional[List[str]]) -> List[Contestant]:
    """The contestants named (all when None), in the study's order."""
    if not names:
        return list(CONTESTANTS)
    known = {c.name for c in CONTESTANTS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown contestant(s) {unknown}; expected some of {sorted(known)}")
    return [c for c in CONTESTANTS if c.name in names]

"""What a study runs: its contestants, the config whose backbone they all start
from, and the toy size of --quick. SHAPES_STUDY is the paper's claims on the shapes
benchmark (tools/study.py); the tree-crown experiment has its own plan."""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from ..data.shapes_benchmark import QUICK_DATASET_NAMES


@dataclass(frozen=True)
class Contestant:
    """name: the run's directory and --only value; label: its name in the table and
    plot; config: a LazyConfig path relative to the repository's configs/;
    overrides: key=value applied to it (a seed, a setting); pretrained: starts from
    the study's pretrained backbone (else from the config's train.init_checkpoint)."""

    name: str
    label: str
    config: str
    overrides: Tuple[str, ...] = ()
    pretrained: bool = True


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
class Plan:
    """contestants, in the order they train; pretraining_config: the config (relative to
    configs/) whose backbone, data and backbone_pretraining settings give the backbone
    every pretrained contestant starts from."""

    contestants: Tuple[Contestant, ...]
    pretraining_config: str

    def select(self, names: Optional[Sequence[str]]) -> List[Contestant]:
        """The contestants named (all when None), in the plan's order."""
        if not names:
            return list(self.contestants)
        known = {c.name for c in self.contestants}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"unknown contestant(s) {unknown}; expected some of {sorted(known)}")
        return [c for c in self.contestants if c.name in names]


SHAPES_STUDY = Plan(CONTESTANTS, pretraining_config="shapes_benchmark/deformable_detr.py")


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
        """key=value overrides of the pretraining config at this size."""
        return [
            f"dataloader.train.dataset.dataset_dicts.names={self.train_dataset}",
            f"dataloader.test.dataset.names={self.val_dataset}",
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
    """The study's contestants named (all when None), in the study's order."""
    return SHAPES_STUDY.select(names)

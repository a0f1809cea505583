"""Set-prediction losses of the DETR family: classification (Deformable DETR's
sigmoid focal loss, or DETR's softmax cross-entropy with a down-weighted no-object
class), L1 and GIoU box losses on Hungarian-matched pairs, for the final decoder
layer, every earlier layer and the two-stage encoder proposals."""

import torch
import torch.distributed as dist
import torch.nn.functional as F
from detectron2.utils import comm
from torch import Tensor, nn
from torchvision.ops import box_convert, generalized_box_iou, sigmoid_focal_loss

from ..export.precision import full_precision

LOSS_NAMES = ("loss_ce", "loss_bbox", "loss_giou")
CLASS_LOSSES = ("focal", "softmax")


def resolved_num_classes(num_classes) -> int:
    """The class count K of a model and its criterion, at least 1. 0 or None (yacs
    MODEL.DEFORMABLE_DETR.NUM_CLASSES 0, LazyConfig model.num_classes None) mean "from
    the data" (deformable_detr.data.build.resolve_num_classes); a model built before that
    would predict nothing."""
    if num_classes is None or num_classes < 1:
        raise ValueError(
            f"num_classes={num_classes}: the model's class count was not resolved (a model "
            "predicts at least 1 class); set MODEL.DEFORMABLE_DETR.NUM_CLASSES (yacs) or "
            "model.num_classes (LazyConfig), or let the dataset's thing_classes give it: "
            "build through deformable_detr.config.build.build_model, or call "
            "deformable_detr.data.build.register_yacs_datasets(cfg) before DefaultPredictor"
        )
    return num_classes


class SetCriterion(nn.Module):
    """Matches every prediction set to the targets and returns its weighted losses.

    Keys: "loss_ce", "loss_bbox", "loss_giou" for the final layer; the same with
    suffix "_{i}" for outputs["aux_outputs"][i] and "_enc" for outputs["enc_outputs"].
    Each loss is multiplied by the weight of its unsuffixed name and normalized by
    the number of target boxes per worker (at least 1).

    Args:
        num_classes: K, the object classes.
        matcher: called as matcher(outputs, targets), returns per-image
            (query_indices, target_indices), e.g. HungarianMatcher.
        weight_dict: the weight of each of LOSS_NAMES, and nothing else.
        focal_alpha: focal weight of the positive class.
        focal_gamma: focal modulating exponent.
        class_loss: "focal": sigmoid focal loss on K logits, summed and divided by
            the number of target boxes (Deformable DETR); "softmax": cross-entropy
            on K + 1 logits, the last one "no object", as a weighted mean over all
            queries (DETR).
        no_object_weight: "softmax" only: the weight of the no-object class
            (DETR's eos_coef); the object classes weigh 1.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: nn.Module,
        weight_dict: dict[str, float],
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        class_loss: str = "focal",
        no_object_weight: float = 0.1,
    ):
        super().__init__()
        if class_loss not in CLASS_LOSSES:
            raise ValueError(
                f"SetCriterion: class_loss must be one of {CLASS_LOSSES}, got {class_loss!r}"
            )
        missing = [name for name in LOSS_NAMES if name not in weight_dict]
        unknown = [name for name in weight_dict if name not in LOSS_NAMES]
        if missing or unknown:
            raise ValueError(
                f"SetCriterion: weight_dict must have exactly the keys {LOSS_NAMES} (the '_{{i}}' "
                f"and '_enc' losses take the weight of their unsuffixed name); missing {missing}, "
                f"unknown {unknown}"
            )
        self.num_classes = resolved_num_classes(num_classes)
        self.matcher = matcher
        self.weight_dict = dict(weight_dict)
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.class_loss = class_loss
        self.num_logits = num_classes + (class_loss == "softmax")
        class_weights = torch.ones(num_classes + 1)
        class_weights[-1] = no_object_weight
        self.register_buffer("class_weights", class_weights, persistent=False)

    def forward(self, outputs: dict, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """
        Args:
            outputs: "pred_logits" (B, Q, K) and "pred_boxes" (B, Q, 4) normalized
                (cx, cy, w, h); optional "aux_outputs", a list of dicts with the same
                two keys (earlier decoder layers); optional "enc_outputs", a dict
                with the same two keys (two-stage proposals).
            targets: B dicts with "labels" (T_i,) int64 in [0, K) and "boxes"
                (T_i, 4) normalized (cx, cy, w, h).

        Returns:
            Weighted scalar losses by name, float32 (float64 for a float64 model).
        """
        num_boxes = self._num_boxes_per_worker(targets, outputs["pred_logits"].device)
        losses = self._weighted_set_losses(outputs, targets, num_boxes, suffix="")
        for layer_index, layer_outputs in enumerate(outputs.get("aux_outputs", [])):
            losses.update(
                self._weighted_set_losses(
                    layer_outputs, targets, num_boxes, suffix=f"_{layer_index}"
                )
            )
        if "enc_outputs" in outputs:
            if self.class_loss != "focal":
                raise ValueError("SetCriterion: two-stage encoder outputs need class_loss='focal'")
            # The two-stage proposals only learn objectness: every target counts as class 0.
            class_agnostic_targets = [
                {**t, "labels": torch.zeros_like(t["labels"])} for t in targets
            ]
            losses.update(
                self._weighted_set_losses(
                    outputs["enc_outputs"], class_agnostic_targets, num_boxes, suffix="_enc"
                )
            )
        return losses

    def _weighted_set_losses(
        self,
        outputs: dict[str, Tensor],
        targets: list[dict[str, Tensor]],
        num_boxes: Tensor,
        suffix: str,
    ) -> dict[str, Tensor]:
        """The three losses of one prediction set, weighted, with suffix appended to their names."""
        matches = self.matcher(outputs, targets)
        pred_logits = full_precision(outputs["pred_logits"])
        pred_boxes = full_precision(outputs["pred_boxes"])
        if pred_logits.shape[-1] != self.num_logits:
            raise ValueError(
                f"SetCriterion: expected {self.num_logits} class logits, got "
                f"{pred_logits.shape[-1]} ({self.num_classes} classes, "
                f"class_loss={self.class_loss!r})"
            )
        device = pred_logits.device
        batch_indices = torch.cat(
            [torch.full_like(queries, i) for i, (queries, _) in enumerate(matches)]
        ).to(device)
        query_indices = torch.cat([queries for queries, _ in matches]).to(device)
        matched_labels = torch.cat(
            [t["labels"].to(device)[tgt] for t, (_, tgt) in zip(targets, matches)]
        )
        matched_boxes = torch.cat(
            [t["boxes"].to(pred_boxes)[tgt] for t, (_, tgt) in zip(targets, matches)]
        )

        if self.class_loss == "focal":
            loss_ce = (
                self._focal_loss(pred_logits, batch_indices, query_indices, matched_labels)
                / num_boxes
            )
        else:
            loss_ce = self._softmax_loss(pred_logits, batch_indices, query_indices, matched_labels)
        unweighted = {
            "loss_ce": loss_ce,
            **self._box_losses(pred_boxes[batch_indices, query_indices], matched_boxes, num_boxes),
        }
        return {name + suffix: self.weight_dict[name] * loss for name, loss in unweighted.items()}

    def _focal_loss(
        self,
        pred_logits: Tensor,
        batch_indices: Tensor,
        query_indices: Tensor,
        matched_labels: Tensor,
    ) -> Tensor:
        """pred_logits: (B, Q, K); the three indices: (M,). Returns the focal loss
        summed over all queries and classes against one-hot targets, which are all
        zero for unmatched queries."""
        one_hot = torch.zeros_like(pred_logits)
        one_hot[batch_indices, query_indices, matched_labels] = 1
        return sigmoid_focal_loss(
            pred_logits, one_hot, alpha=self.focal_alpha, gamma=self.focal_gamma, reduction="sum"
        )

    def _softmax_loss(
        self,
        pred_logits: Tensor,
        batch_indices: Tensor,
        query_indices: Tensor,
        matched_labels: Tensor,
    ) -> Tensor:
        """pred_logits: (B, Q, K + 1); the three indices: (M,). Returns the
        class-weighted mean cross-entropy over all queries, whose targets are the
        no-object class K unless matched."""
        target_classes = torch.full(
            pred_logits.shape[:2], self.num_classes, dtype=torch.int64, device=pred_logits.device
        )
        target_classes[batch_indices, query_indices] = matched_labels
        return F.cross_entropy(
            pred_logits.transpose(1, 2),
            target_classes,
            weight=self.class_weights.to(pred_logits.dtype),  # a half or float64 model's too
        )

    @staticmethod
    def _box_losses(
        pred_boxes: Tensor, target_boxes: Tensor, num_boxes: Tensor
    ) -> dict[str, Tensor]:
        """pred_boxes, target_boxes: (M, 4) matched cxcywh pairs. Returns the summed L1
        and (1 - GIoU) losses divided by num_boxes."""
        pred_xyxy = box_convert(pred_boxes, in_fmt="cxcywh", out_fmt="xyxy")
        target_xyxy = box_convert(target_boxes, in_fmt="cxcywh", out_fmt="xyxy")
        giou = generalized_box_iou(pred_xyxy, target_xyxy).diagonal()
        return {
            "loss_bbox": (pred_boxes - target_boxes).abs().sum() / num_boxes,
            "loss_giou": (1 - giou).sum() / num_boxes,
        }

    @staticmethod
    def _num_boxes_per_worker(targets: list[dict[str, Tensor]], device: torch.device) -> Tensor:
        """The batch's target count averaged over workers, at least 1, as a float32 scalar."""
        num_boxes = torch.tensor(float(sum(len(t["labels"]) for t in targets)), device=device)
        world_size = comm.get_world_size()
        if world_size > 1:
            dist.all_reduce(num_boxes)
        return (num_boxes / world_size).clamp(min=1)

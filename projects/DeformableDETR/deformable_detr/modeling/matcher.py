"""Hungarian matching of the DETR family: a one-to-one assignment of queries to
ground-truth boxes that minimizes a class (focal or softmax) + L1 box + GIoU cost."""

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torchvision.ops import box_convert, generalized_box_iou


class HungarianMatcher(nn.Module):
    """Matches each image's targets to its queries at minimum total cost

        C = cost_class * class_cost + cost_bbox * L1(cxcywh) - cost_giou * GIoU(xyxy),

    class_cost being Deformable DETR's focal cost of sigmoid logits (class_loss
    "focal") or DETR's minus softmax probability of the target class ("softmax",
    whose last logit is "no object").

    Queries left unmatched are trained as background. Targets hold no
    background class, so an image with T targets and Q queries gets min(Q, T) pairs.

    Args:
        cost_class: weight of the classification cost.
        cost_bbox: weight of the L1 distance between normalized cxcywh boxes.
        cost_giou: weight of the negative generalized IoU.
        focal_alpha: focal weight of the positive class.
        focal_gamma: focal modulating exponent.
        class_loss: "focal" or "softmax", as the criterion's.
        eps: added to the probabilities inside the logs of the focal cost.
    """

    def __init__(
        self,
        cost_class: float = 2.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        class_loss: str = "focal",
        *,
        eps: float = 1e-8,
    ):
        super().__init__()
        if class_loss not in ("focal", "softmax"):
            raise ValueError(
                f"HungarianMatcher: class_loss must be 'focal' or 'softmax', got {class_loss!r}"
            )
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError(
                "HungarianMatcher: cost_class, cost_bbox and cost_giou cannot all be 0"
            )
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.class_loss = class_loss
        self.eps = eps

    @torch.no_grad()
    def forward(
        self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]]
    ) -> list[tuple[Tensor, Tensor]]:
        """
        Args:
            outputs: "pred_logits" (B, Q, K) class logits and "pred_boxes" (B, Q, 4)
                normalized (cx, cy, w, h); other keys are ignored.
            targets: B dicts with "labels" (T_i,) int64 in [0, K) and "boxes"
                (T_i, 4) normalized (cx, cy, w, h).

        Returns:
            B pairs (query_indices, target_indices), both (min(Q, T_i),) int64 on
            the CPU, in the order linear_sum_assignment returns them (by query).
        """
        batch_size, num_queries = outputs["pred_logits"].shape[:2]
        # float32 whatever the model's (autocast) dtype: half-precision costs can tie or overflow.
        pred_logits = outputs["pred_logits"].flatten(0, 1).float()
        pred_boxes = outputs["pred_boxes"].flatten(0, 1).float()
        target_labels = torch.cat([t["labels"] for t in targets]).to(pred_logits.device)
        target_boxes = torch.cat([t["boxes"] for t in targets]).to(pred_boxes)

        cost = (
            self.cost_class * self._class_cost(pred_logits, target_labels)
            + self.cost_bbox * torch.cdist(pred_boxes, target_boxes, p=1)
            - self.cost_giou * generalized_box_iou(_to_xyxy(pred_boxes), _to_xyxy(target_boxes))
        )
        # An explicit size, not -1: a batch without any target has an empty cost.
        cost = cost.view(batch_size, num_queries, len(target_labels)).cpu()
        if not torch.isfinite(cost).all():
            raise FloatingPointError(_non_finite_message(pred_logits, pred_boxes, target_boxes))

        sizes = [len(t["boxes"]) for t in targets]
        matches = []
        for image_index, image_cost in enumerate(cost.split(sizes, dim=-1)):
            query_indices, target_indices = linear_sum_assignment(image_cost[image_index].numpy())
            matches.append(
                (
                    torch.as_tensor(query_indices, dtype=torch.int64),
                    torch.as_tensor(target_indices, dtype=torch.int64),
                )
            )
        return matches

    def _class_cost(self, pred_logits: Tensor, target_labels: Tensor) -> Tensor:
        """pred_logits: (N, K) (focal) or (N, K + 1) (softmax), target_labels: (T,).
        Returns (N, T): the focal loss of predicting each target's class as positive
        minus that of predicting it as negative, or minus its softmax probability."""
        if self.class_loss == "softmax":
            return -pred_logits.softmax(-1)[:, target_labels]
        prob = pred_logits.sigmoid()
        neg_cost = (1 - self.focal_alpha) * prob**self.focal_gamma * -(1 - prob + self.eps).log()
        pos_cost = self.focal_alpha * (1 - prob) ** self.focal_gamma * -(prob + self.eps).log()
        return pos_cost[:, target_labels] - neg_cost[:, target_labels]


def _non_finite_message(pred_logits: Tensor, pred_boxes: Tensor, target_boxes: Tensor) -> str:
    counts = {
        name: int((~torch.isfinite(value)).sum())
        for name, value in (
            ("pred_logits", pred_logits),
            ("pred_boxes", pred_boxes),
            ("target boxes", target_boxes),
        )
    }
    found = (
        ", ".join(f"{n} non-finite values in {name}" for name, n in counts.items() if n)
        or "degenerate boxes"
    )
    return (
        f"HungarianMatcher: the matching cost is NaN or Inf ({found}); the model diverged or its "
        "input holds NaN (try a lower learning rate or gradient clipping)"
    )


def _to_xyxy(boxes: Tensor) -> Tensor:
    """(N, 4) cxcywh -> (N, 4) xyxy."""
    return box_convert(boxes, in_fmt="cxcywh", out_fmt="xyxy")
